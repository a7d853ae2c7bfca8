//! SPICE images (the `Image` a draw points at) to pixels: the descriptor, the
//! uncompressed bitmap formats with their palettes, LZ, GLZ (also inside
//! zlib), JPEG, and the caches an image can come from or go into. What is not
//! decoded (QUIC, LZ4: spiced asks for LZ and does not advertise LZ4) is an
//! [`DecodeError::Unsupported`], counted by the mirror.

use super::lz::{self, GlzWindow};
use super::wire::Body;
use super::DecodeError;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Decoded pixels, top-down, one `u32` per pixel: 0xAARRGGBB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub px: Vec<u32>,
}

pub fn argb(a: u8, r: u8, g: u8, b: u8) -> u32 {
    u32::from_be_bytes([a, r, g, b])
}

/// `SPICE_IMAGE_TYPE_*`.
pub mod kind {
    pub const BITMAP: u8 = 0;
    pub const QUIC: u8 = 1;
    pub const LZ_PLT: u8 = 100;
    pub const LZ_RGB: u8 = 101;
    pub const GLZ_RGB: u8 = 102;
    pub const FROM_CACHE: u8 = 103;
    pub const SURFACE: u8 = 104;
    pub const JPEG: u8 = 105;
    pub const FROM_CACHE_LOSSLESS: u8 = 106;
    pub const ZLIB_GLZ_RGB: u8 = 107;
    pub const JPEG_ALPHA: u8 = 108;
    pub const LZ4: u8 = 109;
}

pub const IMAGE_CACHE_ME: u8 = 1;
pub const IMAGE_CACHE_REPLACE_ME: u8 = 4;
const PAL_CACHE_ME: u8 = 1;
const PAL_FROM_CACHE: u8 = 2;
const BITMAP_TOP_DOWN: u8 = 4;
/// A palette has at most 256 entries (8-bit indices).
const MAX_PALETTE: usize = 256;
/// Palettes kept (spice-server's client palette cache holds 128).
const PALETTE_CACHE_ENTRIES: usize = 256;

/// A palette, shared by the cache and the images using it.
type SharedPalette = Arc<[u32]>;

/// Where an image's pixels come from once parsed.
pub enum Source {
    Pixels(Arc<Pixels>),
    /// Another surface (the mirror copies the area it needs).
    Surface(u32),
}

/// The pixmap cache (images the server told spiced to keep, by id), the
/// palette cache and the GLZ window: everything an image may refer to.
/// Byte-bounded: an image that would overflow the cap evicts the oldest, one
/// larger than the cap is refused (and counted).
#[derive(Debug)]
pub struct Caches {
    pixmaps: HashMap<u64, Arc<Pixels>>,
    order: VecDeque<u64>,
    pixmap_bytes: usize,
    pixmap_cap: usize,
    palettes: HashMap<u64, Arc<[u32]>>,
    palette_order: VecDeque<u64>,
    pub glz: GlzWindow,
    /// Images decoded at most this big (pixels).
    pub max_pixels: usize,
    /// Images the cap refused to keep.
    pub refused: u64,
}

impl Caches {
    pub fn new(pixmap_cap: usize, glz_cap: usize, max_pixels: usize) -> Caches {
        Caches {
            pixmaps: HashMap::new(),
            order: VecDeque::new(),
            pixmap_bytes: 0,
            pixmap_cap,
            palettes: HashMap::new(),
            palette_order: VecDeque::new(),
            glz: GlzWindow::new(glz_cap),
            max_pixels,
            refused: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.pixmap_bytes + self.glz.bytes()
    }

    pub fn put_pixmap(&mut self, id: u64, p: Arc<Pixels>) {
        self.drop_pixmap(id);
        let size = p.px.len() * 4;
        if size > self.pixmap_cap {
            self.refused += 1;
            return;
        }
        while self.pixmap_bytes + size > self.pixmap_cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(o) = self.pixmaps.remove(&old) {
                self.pixmap_bytes -= o.px.len() * 4;
            }
        }
        self.pixmap_bytes += size;
        self.pixmaps.insert(id, p);
        self.order.push_back(id);
    }

    pub fn drop_pixmap(&mut self, id: u64) {
        if let Some(o) = self.pixmaps.remove(&id) {
            self.pixmap_bytes -= o.px.len() * 4;
            self.order.retain(|i| *i != id);
        }
    }

    pub fn clear_pixmaps(&mut self) {
        self.pixmaps.clear();
        self.order.clear();
        self.pixmap_bytes = 0;
    }

    pub fn drop_palette(&mut self, id: u64) {
        if self.palettes.remove(&id).is_some() {
            self.palette_order.retain(|i| *i != id);
        }
    }

    pub fn clear_palettes(&mut self) {
        self.palettes.clear();
        self.palette_order.clear();
    }

    fn put_palette(&mut self, id: u64, p: Arc<[u32]>) {
        self.drop_palette(id);
        if self.palette_order.len() >= PALETTE_CACHE_ENTRIES {
            if let Some(old) = self.palette_order.pop_front() {
                self.palettes.remove(&old);
            }
        }
        self.palettes.insert(id, p);
        self.palette_order.push_back(id);
    }

    /// The palette of a bitmap or LZ_PLT image: from the cache by id, or
    /// inline at `ptr` (cached when `flags` say so). None when the image has
    /// none (a bitmap format that needs none).
    fn palette(
        &mut self,
        body: &Body<'_>,
        flags: u8,
        at: usize,
    ) -> Result<(Option<SharedPalette>, usize), DecodeError> {
        if flags & PAL_FROM_CACHE != 0 {
            let id = body.u64(at)?;
            let p = self
                .palettes
                .get(&id)
                .cloned()
                .ok_or(DecodeError::Missing("cached palette"))?;
            return Ok((Some(p), at + 8));
        }
        let ptr = body.u32(at)? as usize;
        if ptr == 0 {
            return Ok((None, at + 4));
        }
        let unique = body.u64(ptr)?;
        let n = usize::from(body.u16(ptr + 8)?);
        if n > MAX_PALETTE {
            return Err(DecodeError::Bad("palette larger than 256 entries"));
        }
        let ents: Vec<u32> = (0..n)
            .map(|i| body.u32(ptr + 10 + 4 * i))
            .collect::<Result<_, _>>()?;
        let p: Arc<[u32]> = ents.into();
        if flags & PAL_CACHE_ME != 0 && unique != 0 {
            self.put_palette(unique, p.clone());
        }
        Ok((Some(p), at + 4))
    }

    /// The image at `at` in `body` (a message body; pointers are offsets from
    /// its start).
    pub fn image(&mut self, body: &Body<'_>, at: usize) -> Result<Source, DecodeError> {
        let id = body.u64(at)?;
        let ty = body.u8(at + 8)?;
        let flags = body.u8(at + 9)?;
        let d = at + 18;
        let pixels = match ty {
            kind::FROM_CACHE | kind::FROM_CACHE_LOSSLESS => {
                return self
                    .pixmaps
                    .get(&id)
                    .cloned()
                    .map(Source::Pixels)
                    .ok_or(DecodeError::Missing("cached image"));
            }
            kind::SURFACE => return Ok(Source::Surface(body.u32(d)?)),
            kind::BITMAP => self.bitmap(body, d)?,
            kind::LZ_RGB => lz::decode_lz(sized(body, d)?, None, self.max_pixels)?,
            kind::LZ_PLT => {
                let pflags = body.u8(d)?;
                let size = body.u32(d + 1)? as usize;
                let (pal, data_at) = self.palette(body, pflags, d + 5)?;
                lz::decode_lz(body.bytes(data_at, size)?, pal.as_deref(), self.max_pixels)?
            }
            kind::GLZ_RGB => lz::decode_glz(sized(body, d)?, &mut self.glz, self.max_pixels)?,
            kind::ZLIB_GLZ_RGB => {
                let glz_size = body.u32(d)? as usize;
                let size = body.u32(d + 4)? as usize;
                let raw = inflate(body.bytes(d + 8, size)?, glz_size, self.max_pixels * 4 + 64)?;
                lz::decode_glz(&raw, &mut self.glz, self.max_pixels)?
            }
            kind::JPEG => super::jpeg::decode(sized(body, d)?, self.max_pixels)?,
            kind::JPEG_ALPHA => {
                let jpeg_size = body.u32(d + 1)? as usize;
                let size = body.u32(d + 5)? as usize;
                let data = body.bytes(d + 9, size)?;
                let jpeg = data.get(..jpeg_size).ok_or(DecodeError::Truncated)?;
                let mut p = super::jpeg::decode(jpeg, self.max_pixels)?;
                // The alpha plane: an LZ XXXA image after the JPEG (both
                // top-down once decoded).
                let alpha = lz::decode_lz(&data[jpeg_size..], None, self.max_pixels)?;
                if alpha.px.len() == p.px.len() {
                    for (q, a) in p.px.iter_mut().zip(&alpha.px) {
                        *q = (*q & 0x00ff_ffff) | (a & 0xff00_0000);
                    }
                }
                p
            }
            kind::QUIC => return Err(DecodeError::Unsupported("quic")),
            kind::LZ4 => return Err(DecodeError::Unsupported("lz4")),
            _ => return Err(DecodeError::Unsupported("image type")),
        };
        let p = Arc::new(pixels);
        if flags & (IMAGE_CACHE_ME | IMAGE_CACHE_REPLACE_ME) != 0 {
            self.put_pixmap(id, p.clone());
        }
        Ok(Source::Pixels(p))
    }

    fn bitmap(&mut self, body: &Body<'_>, d: usize) -> Result<Pixels, DecodeError> {
        let format = body.u8(d)?;
        let flags = body.u8(d + 1)?;
        let width = body.u32(d + 2)? as usize;
        let height = body.u32(d + 6)? as usize;
        let stride = body.u32(d + 10)? as usize;
        let n = lz::checked_pixels(width, height, self.max_pixels)?;
        let (pal, data_at) = self.palette(body, flags, d + 14)?;
        let len = stride.checked_mul(height).ok_or(DecodeError::TooLarge)?;
        let data = body.bytes(data_at, len)?;
        let bits = match format {
            1..=4 => [1, 1, 4, 4][usize::from(format - 1)],
            5 | 10 => 8,
            6 => 16,
            7 => 24,
            8 | 9 => 32,
            _ => return Err(DecodeError::Unsupported("bitmap format")),
        };
        if stride < (width * bits).div_ceil(8) {
            return Err(DecodeError::Bad("bitmap stride shorter than a row"));
        }
        let ent = |i: usize| -> u32 {
            pal.as_deref()
                .and_then(|p| p.get(i))
                .map_or(0xff00_0000, |c| c | 0xff00_0000)
        };
        let mut px = Vec::with_capacity(n);
        for y in 0..height {
            let row = &data[y * stride..y * stride + stride];
            for x in 0..width {
                px.push(match format {
                    1 => ent(usize::from((row[x / 8] >> (x % 8)) & 1)),
                    2 => ent(usize::from((row[x / 8] >> (7 - x % 8)) & 1)),
                    3 => ent(usize::from((row[x / 2] >> (4 * (x % 2))) & 15)),
                    4 => ent(usize::from((row[x / 2] >> (4 * (1 - x % 2))) & 15)),
                    5 => ent(usize::from(row[x])),
                    6 => lz::rgb555(u16::from_le_bytes([row[2 * x], row[2 * x + 1]])),
                    7 => argb(0xff, row[3 * x + 2], row[3 * x + 1], row[3 * x]),
                    8 => argb(0xff, row[4 * x + 2], row[4 * x + 1], row[4 * x]),
                    9 => argb(row[4 * x + 3], row[4 * x + 2], row[4 * x + 1], row[4 * x]),
                    _ => u32::from(row[x]) << 24,
                });
            }
        }
        if flags & BITMAP_TOP_DOWN == 0 {
            lz::flip(&mut px, width);
        }
        Ok(Pixels {
            width: width as u32,
            height: height as u32,
            px,
        })
    }
}

/// `BinaryData`: a u32 size, then the bytes.
fn sized<'a>(body: &Body<'a>, at: usize) -> Result<&'a [u8], DecodeError> {
    let n = body.u32(at)? as usize;
    body.bytes(at + 4, n)
}

/// zlib, at most `want` bytes out (and never more than `cap`).
fn inflate(data: &[u8], want: usize, cap: usize) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read;
    if want > cap {
        return Err(DecodeError::TooLarge);
    }
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(want as u64)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Bad("zlib"))?;
    Ok(out)
}

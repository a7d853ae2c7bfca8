//! SPICE's LZ and GLZ image codecs, decode side (the format of spice-common's
//! `lz.c` and spice-gtk's GLZ window, written from the format, not the code).
//! Every length, offset and back-reference is checked against the buffers; a
//! bad one is an error, never a panic.
//!
//! LZ: a 28-byte big-endian header (magic, version, image type, width,
//! height, stride, top-down), then control bytes: below 32 a run of literal
//! pixels, else a back-reference (length, 13- or 16-bit distance) within the
//! image. GLZ adds references into earlier images of a shared window.

use super::image::{argb, Pixels};
use super::DecodeError;

const MAGIC: u32 = 0x2020_5a4c;
const VERSION: u32 = 0x0001_0001;
const MAX_COPY: u32 = 32;
const MAX_DISTANCE: usize = 8191;

/// `LzImageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LzType {
    Plt1Le,
    Plt1Be,
    Plt4Le,
    Plt4Be,
    Plt8,
    Rgb16,
    Rgb24,
    Rgb32,
    Rgba,
    Xxxa,
    A8,
}

impl LzType {
    fn from_u32(v: u32) -> Result<LzType, DecodeError> {
        Ok(match v {
            1 => LzType::Plt1Le,
            2 => LzType::Plt1Be,
            3 => LzType::Plt4Le,
            4 => LzType::Plt4Be,
            5 => LzType::Plt8,
            6 => LzType::Rgb16,
            7 => LzType::Rgb24,
            8 => LzType::Rgb32,
            9 => LzType::Rgba,
            10 => LzType::Xxxa,
            11 => LzType::A8,
            _ => return Err(DecodeError::Bad("lz image type")),
        })
    }

    /// Pixels per byte of a palette image.
    fn plt_pixels_per_byte(self) -> Option<usize> {
        match self {
            LzType::Plt1Le | LzType::Plt1Be => Some(8),
            LzType::Plt4Le | LzType::Plt4Be => Some(2),
            LzType::Plt8 => Some(1),
            _ => None,
        }
    }
}

/// A cursor over the compressed bytes.
struct In<'a> {
    b: &'a [u8],
    at: usize,
}

impl In<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = *self.b.get(self.at).ok_or(DecodeError::Truncated)?;
        self.at += 1;
        Ok(v)
    }
    fn be32(&mut self) -> Result<u32, DecodeError> {
        let mut v = 0u32;
        for _ in 0..4 {
            v = (v << 8) | u32::from(self.u8()?);
        }
        Ok(v)
    }
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated)?;
        let v = self.b.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(v)
    }
    fn be64(&mut self) -> Result<u64, DecodeError> {
        Ok((u64::from(self.be32()?) << 32) | u64::from(self.be32()?))
    }
}

/// What a palette image's indices mean.
pub type Palette = [u32];

/// An LZ image (`LZ_RGB` or `LZ_PLT`): pixels top-down, 0xAARRGGBB.
pub fn decode_lz(
    data: &[u8],
    palette: Option<&Palette>,
    max_pixels: usize,
) -> Result<Pixels, DecodeError> {
    let mut r = In { b: data, at: 0 };
    if r.be32()? != MAGIC {
        return Err(DecodeError::Bad("lz magic"));
    }
    if r.be32()? != VERSION {
        return Err(DecodeError::Bad("lz version"));
    }
    let ty = LzType::from_u32(r.be32()?)?;
    let width = r.be32()? as usize;
    let height = r.be32()? as usize;
    let stride = r.be32()? as usize;
    let top_down = r.be32()? != 0;
    let n = checked_pixels(width, height, max_pixels)?;
    let mut px = if let Some(ppb) = ty.plt_pixels_per_byte() {
        let pal = palette.ok_or(DecodeError::Missing("palette"))?;
        // The stride may exceed width/ppb by the partial last byte only.
        if stride < width.div_ceil(ppb) || stride > width / ppb + 1 {
            return Err(DecodeError::Bad("lz palette stride"));
        }
        let nbytes = stride.checked_mul(height).ok_or(DecodeError::TooLarge)?;
        let mut idx = vec![0u8; nbytes];
        lz_units(&mut r, &mut idx, 3, |r, o| {
            o.copy_from_slice(r.take(o.len())?);
            Ok(())
        })?;
        expand_palette(ty, &idx, stride, width, height, pal)
    } else {
        let mut px = vec![0u32; n];
        match ty {
            LzType::Rgb16 => lz_units(&mut r, &mut px, 2, |r, o| {
                let b = r.take(2 * o.len())?;
                for (p, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                    *p = rgb555((u16::from(c[0]) << 8) | u16::from(c[1]));
                }
                Ok(())
            })?,
            LzType::Rgb24 | LzType::Rgb32 => lz_units(&mut r, &mut px, 1, bgr)?,
            LzType::Rgba => {
                lz_units(&mut r, &mut px, 1, bgr)?;
                lz_alpha(&mut r, &mut px, true)?;
            }
            LzType::Xxxa | LzType::A8 => lz_alpha(&mut r, &mut px, false)?,
            _ => return Err(DecodeError::Bad("lz image type")),
        }
        px
    };
    if !top_down {
        flip(&mut px, width);
    }
    Ok(Pixels {
        width: width as u32,
        height: height as u32,
        px,
    })
}

/// A run of literal pixels: B, G, R bytes each.
fn bgr(r: &mut In<'_>, o: &mut [u32]) -> Result<(), DecodeError> {
    let b = r.take(3 * o.len())?;
    for (p, c) in o.iter_mut().zip(b.chunks_exact(3)) {
        *p = argb(0xff, c[2], c[1], c[0]);
    }
    Ok(())
}

/// 0RRRRRGGGGGBBBBB to 8 bits per channel.
pub fn rgb555(v: u16) -> u32 {
    let c = |x: u16| {
        let x = (x & 31) as u8;
        (x << 3) | (x >> 2)
    };
    argb(0xff, c(v >> 10), c(v >> 5), c(v))
}

/// Width x height, refused when 0 or over the cap.
pub fn checked_pixels(width: usize, height: usize, max: usize) -> Result<usize, DecodeError> {
    let n = width.checked_mul(height).ok_or(DecodeError::TooLarge)?;
    if n == 0 {
        return Err(DecodeError::Bad("empty image"));
    }
    if n > max {
        return Err(DecodeError::TooLarge);
    }
    Ok(n)
}

/// The LZ loop over output units (pixels or palette bytes). `bias` is what the
/// encoder took off a match length for this unit size.
fn lz_units<T: Copy>(
    r: &mut In<'_>,
    out: &mut [T],
    bias: usize,
    mut literal: impl FnMut(&mut In<'_>, &mut [T]) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut op = 0usize;
    while op < out.len() {
        let ctrl = u32::from(r.u8()?);
        if ctrl < MAX_COPY {
            let n = ctrl as usize + 1;
            let end = op.checked_add(n).filter(|e| *e <= out.len());
            let end = end.ok_or(DecodeError::Bad("lz literal past the end"))?;
            literal(r, &mut out[op..end])?;
            op = end;
        } else {
            let (len, ofs) = lz_match(r, ctrl)?;
            let len = len + bias;
            copy_back(out, op, ofs, len)?;
            op += len;
        }
    }
    Ok(())
}

/// A back-reference's (length - bias, distance) after its control byte.
fn lz_match(r: &mut In<'_>, ctrl: u32) -> Result<(usize, usize), DecodeError> {
    let mut len = (ctrl >> 5) as usize - 1;
    let mut ofs = ((ctrl & 31) as usize) << 8;
    if len == 6 {
        loop {
            let c = r.u8()?;
            len += usize::from(c);
            if c != 255 {
                break;
            }
        }
    }
    let code = r.u8()?;
    ofs += usize::from(code);
    if code == 255 && ofs - usize::from(code) == 31 << 8 {
        ofs = (usize::from(r.u8()?) << 8) + usize::from(r.u8()?) + MAX_DISTANCE;
    }
    Ok((len, ofs + 1))
}

fn copy_back<T: Copy>(
    out: &mut [T],
    op: usize,
    dist: usize,
    len: usize,
) -> Result<(), DecodeError> {
    if dist > op || op.checked_add(len).is_none_or(|e| e > out.len()) {
        return Err(DecodeError::Bad("lz reference out of the image"));
    }
    let from = op - dist;
    if dist >= len {
        out.copy_within(from..from + len, op);
    } else if dist == 1 {
        // A run of one unit.
        let v = out[from];
        out[op..op + len].fill(v);
    } else {
        // Overlapping on purpose (a repeated pattern): whole periods at a
        // time, each copy reading only what is already written.
        let mut done = 0;
        while done < len {
            let n = (len - done).min(dist);
            out.copy_within(from + done..from + done + n, op + done);
            done += n;
        }
    }
    Ok(())
}

/// The alpha pass of RGBA/XXXA/A8: the same loop over the alpha bytes only.
/// `opaque`: the colour pass left every pixel at alpha 0xff, so a run of
/// 0xff (most of what an X desktop's RGBA images carry) changes nothing.
fn lz_alpha(r: &mut In<'_>, px: &mut [u32], opaque: bool) -> Result<(), DecodeError> {
    let mut op = 0usize;
    while op < px.len() {
        let ctrl = u32::from(r.u8()?);
        if ctrl < MAX_COPY {
            let n = ctrl as usize + 1;
            if op + n > px.len() {
                return Err(DecodeError::Bad("lz literal past the end"));
            }
            let a = r.take(n)?;
            for (p, a) in px[op..op + n].iter_mut().zip(a) {
                *p = (*p & 0x00ff_ffff) | (u32::from(*a) << 24);
            }
            op += n;
        } else {
            let (len, dist) = lz_match(r, ctrl)?;
            let len = len + 3;
            if dist > op || op + len > px.len() {
                return Err(DecodeError::Bad("lz reference out of the image"));
            }
            if dist == 1 {
                // A run (an opaque image: one run of 0xff).
                let a = px[op - 1] & 0xff00_0000;
                if !(opaque && a == 0xff00_0000) {
                    for p in &mut px[op..op + len] {
                        *p = (*p & 0x00ff_ffff) | a;
                    }
                }
            } else {
                for i in op..op + len {
                    px[i] = (px[i] & 0x00ff_ffff) | (px[i - dist] & 0xff00_0000);
                }
            }
            op += len;
        }
    }
    Ok(())
}

/// Palette indices (rows of `stride` bytes) to pixels.
fn expand_palette(
    ty: LzType,
    idx: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    pal: &Palette,
) -> Vec<u32> {
    let ent = |i: usize| pal.get(i).map_or(0xff00_0000, |c| c | 0xff00_0000);
    let mut px = Vec::with_capacity(width * height);
    for row in idx.chunks(stride.max(1)).take(height) {
        for x in 0..width {
            let i = match ty {
                LzType::Plt8 => usize::from(row.get(x).copied().unwrap_or(0)),
                LzType::Plt4Le | LzType::Plt4Be => {
                    let b = row.get(x / 2).copied().unwrap_or(0);
                    let hi_first = ty == LzType::Plt4Be;
                    let nib = if (x % 2 == 0) == hi_first {
                        b >> 4
                    } else {
                        b & 15
                    };
                    usize::from(nib)
                }
                _ => {
                    let b = row.get(x / 8).copied().unwrap_or(0);
                    let bit = if ty == LzType::Plt1Be {
                        7 - x % 8
                    } else {
                        x % 8
                    };
                    usize::from((b >> bit) & 1)
                }
            };
            px.push(ent(i));
        }
    }
    px
}

/// Bottom-up rows to top-down.
pub fn flip(px: &mut [u32], width: usize) {
    if width == 0 {
        return;
    }
    let rows = px.len() / width;
    for y in 0..rows / 2 {
        let (a, b) = px.split_at_mut((rows - 1 - y) * width);
        a[y * width..(y + 1) * width].swap_with_slice(&mut b[..width]);
    }
}

/// The GLZ window: earlier images as decoded (in their own row order), by id,
/// bounded in bytes. The server only refers back `win_head_dist` images, and
/// spiced tells it the window size in DISPLAY_INIT; the byte cap is the
/// backstop against a server that ignores it.
#[derive(Debug)]
pub struct GlzWindow {
    images: std::collections::VecDeque<(u64, Vec<u32>)>,
    bytes: usize,
    cap: usize,
}

impl GlzWindow {
    pub fn new(cap_bytes: usize) -> GlzWindow {
        GlzWindow {
            images: Default::default(),
            bytes: 0,
            cap: cap_bytes,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.images.clear();
        self.bytes = 0;
    }

    fn get(&self, id: u64) -> Option<&[u32]> {
        self.images
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.as_slice())
    }

    fn add(&mut self, id: u64, oldest: u64, px: Vec<u32>) {
        self.images.retain(|(i, _)| *i >= oldest && *i != id);
        let size = px.len() * 4;
        if size > self.cap {
            self.bytes = self.images.iter().map(|(_, p)| p.len() * 4).sum();
            return;
        }
        self.images.push_back((id, px));
        self.bytes = self.images.iter().map(|(_, p)| p.len() * 4).sum();
        while self.bytes > self.cap {
            match self.images.pop_front() {
                Some((_, p)) => self.bytes -= p.len() * 4,
                None => break,
            }
        }
    }
}

/// A GLZ image: decoded against `window` and added to it.
pub fn decode_glz(
    data: &[u8],
    window: &mut GlzWindow,
    max_pixels: usize,
) -> Result<Pixels, DecodeError> {
    let mut r = In { b: data, at: 0 };
    if r.be32()? != MAGIC {
        return Err(DecodeError::Bad("glz magic"));
    }
    if r.be32()? != VERSION {
        return Err(DecodeError::Bad("glz version"));
    }
    let t = r.u8()?;
    let ty = LzType::from_u32(u32::from(t & 0x0f))?;
    let top_down = t >> 4 != 0;
    let width = r.be32()? as usize;
    let height = r.be32()? as usize;
    let _stride = r.be32()?;
    let id = r.be64()?;
    let win_head_dist = r.be32()?;
    let n = checked_pixels(width, height, max_pixels)?;
    let mut px = vec![0u32; n];
    match ty {
        LzType::Rgb16 => glz_units(&mut r, &mut px, window, id, 1, false, |r| {
            Ok(rgb555((u16::from(r.u8()?) << 8) | u16::from(r.u8()?)))
        })?,
        LzType::Rgb24 | LzType::Rgb32 => glz_units(&mut r, &mut px, window, id, 0, false, |r| {
            let (b, g, rr) = (r.u8()?, r.u8()?, r.u8()?);
            Ok(argb(0xff, rr, g, b))
        })?,
        LzType::Rgba => {
            glz_units(&mut r, &mut px, window, id, 0, false, |r| {
                let (b, g, rr) = (r.u8()?, r.u8()?, r.u8()?);
                Ok(argb(0, rr, g, b))
            })?;
            glz_units(&mut r, &mut px, window, id, 2, true, |r| {
                Ok(u32::from(r.u8()?) << 24)
            })?;
        }
        // The server only uses GLZ for RGB images.
        _ => return Err(DecodeError::Unsupported("glz palette image")),
    }
    let mut shown = px.clone();
    window.add(id, id.saturating_sub(u64::from(win_head_dist)), px);
    if !top_down {
        flip(&mut shown, width);
    }
    Ok(Pixels {
        width: width as u32,
        height: height as u32,
        px: shown,
    })
}

/// The GLZ loop. `alpha`: only the alpha byte is written (the second pass of
/// RGBA), literals giving it in the top byte.
#[allow(clippy::too_many_arguments)]
fn glz_units(
    r: &mut In<'_>,
    out: &mut [u32],
    window: &GlzWindow,
    id: u64,
    bias: usize,
    alpha: bool,
    literal: impl Fn(&mut In<'_>) -> Result<u32, DecodeError>,
) -> Result<(), DecodeError> {
    let mut op = 0usize;
    while op < out.len() {
        let ctrl = u32::from(r.u8()?);
        if ctrl < MAX_COPY {
            let n = ctrl as usize + 1;
            if op + n > out.len() {
                return Err(DecodeError::Bad("glz literal past the end"));
            }
            for o in &mut out[op..op + n] {
                let v = literal(r)?;
                put_raw(o, v, alpha);
            }
            op += n;
            continue;
        }
        let mut len = (ctrl >> 5) as usize;
        let mut pixel_flag = (ctrl >> 4) & 1 != 0;
        let mut pixel_ofs = (ctrl & 0x0f) as usize;
        if len == 7 {
            loop {
                let c = r.u8()?;
                len += usize::from(c);
                if c != 255 {
                    break;
                }
            }
        }
        pixel_ofs += usize::from(r.u8()?) << 4;
        let code = r.u8()?;
        let image_flag = (code >> 6) & 3;
        let mut image_dist: u64;
        if !pixel_flag {
            image_dist = u64::from(code & 0x3f);
            for i in 0..image_flag {
                image_dist += u64::from(r.u8()?) << (6 + 8 * u32::from(i));
            }
        } else {
            pixel_flag = (code >> 5) & 1 != 0;
            pixel_ofs += usize::from(code & 0x1f) << 12;
            image_dist = 0;
            for i in 0..image_flag {
                image_dist += u64::from(r.u8()?) << (8 * u32::from(i));
            }
            if pixel_flag {
                pixel_ofs += usize::from(r.u8()?) << 17;
            }
        }
        len += bias;
        if op + len > out.len() {
            return Err(DecodeError::Bad("glz match past the end"));
        }
        if image_dist == 0 {
            pixel_ofs += 1;
            if pixel_ofs > op {
                return Err(DecodeError::Bad("glz reference out of the image"));
            }
            for i in op..op + len {
                let v = out[i - pixel_ofs];
                put_raw(&mut out[i], v, alpha);
            }
        } else {
            let src = window
                .get(id.wrapping_sub(image_dist))
                .ok_or(DecodeError::Missing("glz window image"))?;
            let s = src
                .get(pixel_ofs..pixel_ofs.saturating_add(len))
                .ok_or(DecodeError::Bad("glz reference out of the image"))?;
            for (o, v) in out[op..op + len].iter_mut().zip(s) {
                put_raw(o, *v, alpha);
            }
        }
        op += len;
    }
    Ok(())
}

/// The alpha pass writes the alpha byte only; the colour pass the whole pixel.
fn put_raw(o: &mut u32, v: u32, alpha: bool) {
    *o = if alpha {
        (*o & 0x00ff_ffff) | (v & 0xff00_0000)
    } else {
        v
    };
}

#[cfg(test)]
mod tests {

    /// Back-references copy what the one-unit-at-a-time definition copies,
    /// for every distance and length (overlapping or not).
    #[test]
    fn copy_back_is_the_unit_by_unit_copy() {
        for dist in 1..12 {
            for len in 0..30 {
                let mut a: Vec<u32> = (0..64).collect();
                let mut b = a.clone();
                let op = 20;
                copy_back(&mut a, op, dist, len).unwrap();
                for i in op..op + len {
                    b[i] = b[i - dist];
                }
                assert_eq!(a, b, "dist {dist} len {len}");
            }
        }
        let mut a = vec![0u32; 8];
        assert!(copy_back(&mut a, 2, 3, 1).is_err());
        assert!(copy_back(&mut a, 2, 1, 7).is_err());
    }

    use super::*;

    fn header(ty: u32, w: u32, h: u32, stride: u32, top_down: bool) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [MAGIC, VERSION, ty, w, h, stride, u32::from(top_down)] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b
    }

    #[test]
    fn lz_rgb_literals_and_a_run() {
        // 4x1: one literal blue pixel, then a run of 3 copies of it.
        let mut b = header(8, 4, 1, 16, true);
        b.extend_from_slice(&[0, 0xff, 0, 0]); // 1 literal: b=ff g=0 r=0
        b.extend_from_slice(&[3 << 5, 0]); // a match of 3 at distance 1
        let p = decode_lz(&b, None, 1 << 20).unwrap();
        assert_eq!(p.px, vec![0xff00_00ff; 4]);
    }

    #[test]
    fn lz_rgba_alpha_runs() {
        // w x 1 RGBA: one literal blue pixel and a run of it (w - 1, RGB
        // matches count from 1), then the alpha pass (its matches from 3).
        let rgba = |w: u32, alpha: &[u8]| {
            let mut b = header(9, w, 1, 4 * w, true);
            b.extend_from_slice(&[0, 0xff, 0, 0, ((w - 1) << 5) as u8, 0]);
            b.extend_from_slice(alpha);
            decode_lz(&b, None, 1 << 20).unwrap().px
        };
        // Opaque: one literal 0xff and a run of it (the skipped case).
        assert_eq!(rgba(4, &[0, 0xff, 1 << 5, 0]), vec![0xff00_00ff; 4]);
        // A translucent run is written, also after an opaque literal.
        assert_eq!(rgba(4, &[0, 0x80, 1 << 5, 0]), vec![0x8000_00ff; 4]);
        assert_eq!(
            rgba(5, &[1, 0xff, 0x80, 1 << 5, 0]),
            vec![
                0xff00_00ff,
                0x8000_00ff,
                0x8000_00ff,
                0x8000_00ff,
                0x8000_00ff
            ]
        );
        // XXXA has no colour pass: its run of 0xff must be written.
        let mut b = header(10, 4, 1, 16, true);
        b.extend_from_slice(&[0, 0xff, 1 << 5, 0]);
        assert_eq!(
            decode_lz(&b, None, 1 << 20).unwrap().px,
            vec![0xff00_0000; 4]
        );
    }

    #[test]
    fn lz_bottom_up_is_flipped_and_palette_expanded() {
        // 2x2 PLT8, bottom-up: rows [1,0] then [0,1] on the wire.
        let mut b = header(5, 2, 2, 2, false);
        b.extend_from_slice(&[3, 1, 0, 0, 1]);
        let pal = [0x000000, 0xffffff];
        let p = decode_lz(&b, Some(&pal), 1 << 20).unwrap();
        assert_eq!(
            p.px,
            vec![0xff00_0000, 0xffff_ffff, 0xffff_ffff, 0xff00_0000]
        );
        // No palette: refused.
        assert!(decode_lz(&b, None, 1 << 20).is_err());
    }

    #[test]
    fn lz_refuses_what_does_not_fit() {
        let b = header(8, 100_000, 100_000, 0, true);
        assert_eq!(decode_lz(&b, None, 1 << 20), Err(DecodeError::TooLarge));
        // A reference before the start.
        let mut b = header(8, 4, 1, 16, true);
        b.extend_from_slice(&[3 << 5, 5]);
        assert!(decode_lz(&b, None, 1 << 20).is_err());
        // Truncated.
        let mut b = header(8, 4, 1, 16, true);
        b.extend_from_slice(&[3, 1, 2]);
        assert_eq!(decode_lz(&b, None, 1 << 20), Err(DecodeError::Truncated));
    }

    fn glz(id: u64, dist: u32, w: u32, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_be_bytes());
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.push(8 | 1 << 4);
        for v in [w, 1, w * 4] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&dist.to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn glz_refers_to_an_earlier_image() {
        let mut w = GlzWindow::new(1 << 20);
        // Image 1: two literal pixels.
        let a = glz(1, 0, 2, &[1, 1, 2, 3, 4, 5, 6]);
        let p = decode_glz(&a, &mut w, 1 << 20).unwrap();
        assert_eq!(p.px, vec![0xff03_0201, 0xff06_0504]);
        // Image 2: len 2 (ctrl>>5 = 2) from image 1 (dist 1), pixel 0.
        let b = glz(2, 1, 2, &[2 << 5, 0, 1]);
        let p = decode_glz(&b, &mut w, 1 << 20).unwrap();
        assert_eq!(p.px, vec![0xff03_0201, 0xff06_0504]);
        // An image the window never had.
        let c = glz(3, 3, 2, &[2 << 5, 0, 3]);
        assert_eq!(
            decode_glz(&c, &mut w, 1 << 20),
            Err(DecodeError::Missing("glz window image"))
        );
    }

    #[test]
    fn glz_window_is_byte_bounded() {
        let mut w = GlzWindow::new(64);
        for id in 0..10 {
            w.add(id, 0, vec![0; 8]);
        }
        assert!(w.bytes() <= 64);
        assert!(w.get(9).is_some() && w.get(0).is_none());
        w.add(10, 10, vec![0; 1000]);
        assert!(w.bytes() <= 64);
    }
}

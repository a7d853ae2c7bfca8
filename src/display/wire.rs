//! The display channel's server messages, parsed into what the mirror draws.
//! Layouts as spice-common's `spice.proto` describes them for protocol 2:
//! little-endian, pointers are u32 offsets from the start of the message body
//! (0 = none), clip rectangles inline. Every read is bounds-checked.

use super::DecodeError;

/// `SPICE_MSG_DISPLAY_*`.
pub mod msg {
    pub const MODE: u16 = 101;
    pub const MARK: u16 = 102;
    pub const RESET: u16 = 103;
    pub const COPY_BITS: u16 = 104;
    pub const INVAL_LIST: u16 = 105;
    pub const INVAL_ALL_PIXMAPS: u16 = 106;
    pub const INVAL_PALETTE: u16 = 107;
    pub const INVAL_ALL_PALETTES: u16 = 108;
    pub const STREAM_CREATE: u16 = 122;
    pub const STREAM_DATA: u16 = 123;
    pub const STREAM_CLIP: u16 = 124;
    pub const STREAM_DESTROY: u16 = 125;
    pub const STREAM_DESTROY_ALL: u16 = 126;
    pub const DRAW_FILL: u16 = 302;
    pub const DRAW_OPAQUE: u16 = 303;
    pub const DRAW_COPY: u16 = 304;
    pub const DRAW_BLEND: u16 = 305;
    pub const DRAW_BLACKNESS: u16 = 306;
    pub const DRAW_WHITENESS: u16 = 307;
    pub const DRAW_INVERS: u16 = 308;
    pub const DRAW_ROP3: u16 = 309;
    pub const DRAW_STROKE: u16 = 310;
    pub const DRAW_TEXT: u16 = 311;
    pub const DRAW_TRANSPARENT: u16 = 312;
    pub const DRAW_ALPHA_BLEND: u16 = 313;
    pub const SURFACE_CREATE: u16 = 314;
    pub const SURFACE_DESTROY: u16 = 315;
    pub const STREAM_DATA_SIZED: u16 = 316;
    pub const MONITORS_CONFIG: u16 = 317;
    pub const DRAW_COMPOSITE: u16 = 318;
    pub const STREAM_ACTIVATE_REPORT: u16 = 319;
    pub const GL_SCANOUT_UNIX: u16 = 320;
    pub const GL_DRAW: u16 = 321;
    pub const QUALITY_INDICATOR: u16 = 322;
}

/// Bounds-checked little-endian reads at offsets of a message body.
#[derive(Debug, Clone, Copy)]
pub struct Body<'a>(pub &'a [u8]);

impl<'a> Body<'a> {
    pub fn bytes(&self, at: usize, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = at.checked_add(n).ok_or(DecodeError::Truncated)?;
        self.0.get(at..end).ok_or(DecodeError::Truncated)
    }
    pub fn u8(&self, at: usize) -> Result<u8, DecodeError> {
        Ok(self.bytes(at, 1)?[0])
    }
    pub fn u16(&self, at: usize) -> Result<u16, DecodeError> {
        let b = self.bytes(at, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&self, at: usize) -> Result<u32, DecodeError> {
        let b = self.bytes(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn i32(&self, at: usize) -> Result<i32, DecodeError> {
        Ok(self.u32(at)? as i32)
    }
    pub fn u64(&self, at: usize) -> Result<u64, DecodeError> {
        let b = self.bytes(at, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn rect(&self, at: usize) -> Result<Rect, DecodeError> {
        Ok(Rect {
            top: self.i32(at)?,
            left: self.i32(at + 4)?,
            bottom: self.i32(at + 8)?,
            right: self.i32(at + 12)?,
        })
    }
}

/// A rectangle as SPICE sends it: right and bottom exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub top: i32,
    pub left: i32,
    pub bottom: i32,
    pub right: i32,
}

impl Rect {
    pub fn width(&self) -> i64 {
        (i64::from(self.right) - i64::from(self.left)).max(0)
    }
    pub fn height(&self) -> i64 {
        (i64::from(self.bottom) - i64::from(self.top)).max(0)
    }
    pub fn is_empty(&self) -> bool {
        self.width() == 0 || self.height() == 0
    }
    pub fn intersect(&self, o: &Rect) -> Rect {
        Rect {
            top: self.top.max(o.top),
            left: self.left.max(o.left),
            bottom: self.bottom.min(o.bottom),
            right: self.right.min(o.right),
        }
    }
}

/// At most this many clip rectangles per draw (a real server sends a few).
pub const MAX_CLIP_RECTS: u32 = 4096;

/// What every draw starts with: target surface, bounding box, clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub surface: u32,
    pub bbox: Rect,
    /// None: only the box clips.
    pub clip: Option<Vec<Rect>>,
    /// Where the draw's own fields start.
    pub end: usize,
}

pub fn base(b: &Body<'_>) -> Result<Base, DecodeError> {
    let surface = b.u32(0)?;
    let bbox = b.rect(4)?;
    let (clip, end) = match b.u8(20)? {
        0 => (None, 21),
        1 => {
            let n = b.u32(21)?;
            if n > MAX_CLIP_RECTS {
                return Err(DecodeError::TooLarge);
            }
            let rects = (0..n as usize)
                .map(|i| b.rect(25 + 16 * i))
                .collect::<Result<Vec<_>, _>>()?;
            (Some(rects), 25 + 16 * n as usize)
        }
        _ => return Err(DecodeError::Bad("clip type")),
    };
    Ok(Base {
        surface,
        bbox,
        clip,
        end,
    })
}

/// `Brush`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brush {
    None,
    Solid(u32),
    /// A pattern image (offset of its Image) and its origin.
    Pattern {
        image: usize,
        x: i32,
        y: i32,
    },
}

/// A brush and where the next field starts.
pub fn brush(b: &Body<'_>, at: usize) -> Result<(Brush, usize), DecodeError> {
    Ok(match b.u8(at)? {
        0 => (Brush::None, at + 1),
        1 => (Brush::Solid(b.u32(at + 1)?), at + 5),
        2 => (
            Brush::Pattern {
                image: b.u32(at + 1)? as usize,
                x: b.i32(at + 5)?,
                y: b.i32(at + 9)?,
            },
            at + 13,
        ),
        _ => return Err(DecodeError::Bad("brush type")),
    })
}

/// `QMask`: true when a mask bitmap is present (the mirror draws unmasked and
/// counts it).
pub fn has_mask(b: &Body<'_>, at: usize) -> Result<bool, DecodeError> {
    Ok(b.u32(at + 9)? != 0)
}

/// The fixed part of DRAW_COPY, DRAW_BLEND, DRAW_OPAQUE, DRAW_TRANSPARENT,
/// DRAW_ALPHA_BLEND after the base: the source image and area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrcArea {
    pub image: usize,
    pub area: Rect,
}

pub fn src_area(b: &Body<'_>, at: usize) -> Result<SrcArea, DecodeError> {
    Ok(SrcArea {
        image: b.u32(at)? as usize,
        area: b.rect(at + 4)?,
    })
}

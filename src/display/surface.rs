//! A surface (the primary screen or an off-screen one) and the raster
//! operations the mirror applies to it. Every operation clips to the surface
//! and to the rectangle it is given; nothing outside is ever touched.
//! Pixels are shared copy-on-write, so a snapshot taken for a screenshot
//! costs nothing until the next draw.

use super::image::Pixels;
use super::wire::Rect;
use std::sync::Arc;

/// `SPICE_ROPD_*` bits.
pub mod rop {
    pub const INVERS_SRC: u16 = 1;
    pub const INVERS_BRUSH: u16 = 2;
    pub const INVERS_DEST: u16 = 4;
    pub const OP_PUT: u16 = 8;
    pub const OP_OR: u16 = 16;
    pub const OP_AND: u16 = 32;
    pub const OP_XOR: u16 = 64;
    pub const OP_BLACKNESS: u16 = 128;
    pub const OP_WHITENESS: u16 = 256;
    pub const OP_INVERS: u16 = 512;
    pub const INVERS_RES: u16 = 1024;
}

#[derive(Debug, Clone)]
pub struct Surface {
    pub width: u32,
    pub height: u32,
    pub px: Arc<Vec<u32>>,
}

/// One pixel through a ROP descriptor.
fn apply_rop(d: u16, src: u32, dst: u32) -> u32 {
    let s = if d & (rop::INVERS_SRC | rop::INVERS_BRUSH) != 0 {
        !src
    } else {
        src
    };
    let t = if d & rop::INVERS_DEST != 0 { !dst } else { dst };
    let r = if d & rop::OP_OR != 0 {
        s | t
    } else if d & rop::OP_AND != 0 {
        s & t
    } else if d & rop::OP_XOR != 0 {
        s ^ t
    } else if d & rop::OP_BLACKNESS != 0 {
        0
    } else if d & rop::OP_WHITENESS != 0 {
        0x00ff_ffff
    } else if d & rop::OP_INVERS != 0 {
        !t
    } else {
        s
    };
    let r = if d & rop::INVERS_RES != 0 { !r } else { r };
    r & 0x00ff_ffff
}

impl Surface {
    pub fn new(width: u32, height: u32) -> Surface {
        Surface {
            width,
            height,
            px: Arc::new(vec![0; width as usize * height as usize]),
        }
    }

    pub fn bounds(&self) -> Rect {
        Rect {
            top: 0,
            left: 0,
            bottom: self.height as i32,
            right: self.width as i32,
        }
    }

    /// `r` within the surface, as usize ranges (empty when outside).
    fn clip(&self, r: &Rect) -> Option<(usize, usize, usize, usize)> {
        let c = r.intersect(&self.bounds());
        (!c.is_empty()).then_some({
            (
                c.left as usize,
                c.top as usize,
                c.right as usize,
                c.bottom as usize,
            )
        })
    }

    /// Fills `r` with `color` through `rop_d`.
    pub fn fill(&mut self, r: &Rect, color: u32, rop_d: u16) {
        let Some((x0, y0, x1, y1)) = self.clip(r) else {
            return;
        };
        let w = self.width as usize;
        let px = Arc::make_mut(&mut self.px);
        let plain = rop_d & !rop::OP_PUT == 0;
        for y in y0..y1 {
            let row = &mut px[y * w + x0..y * w + x1];
            if plain {
                row.fill(color & 0x00ff_ffff);
            } else {
                for p in row {
                    *p = apply_rop(rop_d, color, *p);
                }
            }
        }
    }

    /// Draws `src` into `r`: `area` of `src` scaled (nearest) onto `dest`,
    /// only where `r` (already within `dest`) is. `mode` picks what a pixel
    /// does.
    pub fn blit(&mut self, r: &Rect, dest: &Rect, src: &Pixels, area: &Rect, mode: Blit) {
        let Some((x0, y0, x1, y1)) = self.clip(&r.intersect(dest)) else {
            return;
        };
        let (sw, sh) = (src.width as i64, src.height as i64);
        let (dw, dh) = (dest.width().max(1), dest.height().max(1));
        let (aw, ah) = (area.width(), area.height());
        if aw == 0 || ah == 0 || sw == 0 || sh == 0 {
            return;
        }
        let w = self.width as usize;
        let px = Arc::make_mut(&mut self.px);
        for y in y0..y1 {
            let sy = i64::from(area.top) + (y as i64 - i64::from(dest.top)) * ah / dh;
            if !(0..sh).contains(&sy) {
                continue;
            }
            let srow = &src.px[sy as usize * sw as usize..(sy as usize + 1) * sw as usize];
            for x in x0..x1 {
                let sx = i64::from(area.left) + (x as i64 - i64::from(dest.left)) * aw / dw;
                if !(0..sw).contains(&sx) {
                    continue;
                }
                let s = srow[sx as usize];
                let d = &mut px[y * w + x];
                *d = match mode {
                    Blit::Rop(rop_d) => apply_rop(rop_d, s, *d),
                    Blit::Transparent(key) => {
                        if s & 0x00ff_ffff == key & 0x00ff_ffff {
                            continue;
                        }
                        s & 0x00ff_ffff
                    }
                    Blit::Alpha { alpha, src_alpha } => blend(s, *d, alpha, src_alpha),
                };
            }
        }
    }

    /// COPY_BITS: the area at `from` moved to `r` (overlap-safe).
    pub fn copy_bits(&mut self, r: &Rect, from_x: i32, from_y: i32, clip: &Rect) {
        let area = Rect {
            top: from_y,
            left: from_x,
            bottom: from_y.saturating_add(r.height() as i32),
            right: from_x.saturating_add(r.width() as i32),
        };
        let src = self.extract(&area);
        if let Some(src) = src {
            self.blit(
                clip,
                r,
                &src,
                &Rect {
                    top: 0,
                    left: 0,
                    bottom: src.height as i32,
                    right: src.width as i32,
                },
                Blit::Rop(rop::OP_PUT),
            );
        }
    }

    /// A copy of `area` (clipped to the surface; pixels outside are black).
    pub fn extract(&self, area: &Rect) -> Option<Pixels> {
        let (w, h) = (area.width() as usize, area.height() as usize);
        if w == 0 || h == 0 || w.checked_mul(h)? > self.px.len().max(1) {
            return None;
        }
        let mut out = vec![0u32; w * h];
        if let Some((x0, y0, x1, y1)) = self.clip(area) {
            let sw = self.width as usize;
            for y in y0..y1 {
                let oy = (y as i64 - i64::from(area.top)) as usize;
                let ox = (x0 as i64 - i64::from(area.left)) as usize;
                out[oy * w + ox..oy * w + ox + (x1 - x0)]
                    .copy_from_slice(&self.px[y * sw + x0..y * sw + x1]);
            }
        }
        Some(Pixels {
            width: w as u32,
            height: h as u32,
            px: out,
        })
    }
}

/// How a source pixel lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blit {
    Rop(u16),
    /// Pixels of this colour are skipped.
    Transparent(u32),
    /// Blended with a global alpha, and the source's own (premultiplied) alpha
    /// when it has one.
    Alpha {
        alpha: u8,
        src_alpha: bool,
    },
}

fn blend(s: u32, d: u32, alpha: u8, src_alpha: bool) -> u32 {
    let ga = u32::from(alpha);
    let sa = if src_alpha { s >> 24 } else { 255 };
    let a = sa * ga / 255;
    let ch = |shift: u32| {
        let sc = (s >> shift) & 0xff;
        let dc = (d >> shift) & 0xff;
        // Premultiplied source (pixman OVER): src * ga + dst * (1 - a).
        let sc = if src_alpha {
            sc * ga / 255
        } else {
            sc * a / 255
        };
        (sc + dc * (255 - a) / 255).min(255)
    };
    (ch(16) << 16) | (ch(8) << 8) | ch(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(l: i32, t: i32, rr: i32, b: i32) -> Rect {
        Rect {
            top: t,
            left: l,
            bottom: b,
            right: rr,
        }
    }

    #[test]
    fn fill_is_clipped_to_the_surface() {
        let mut s = Surface::new(4, 3);
        s.fill(&r(-10, -10, 2, 1), 0xff0000, rop::OP_PUT);
        s.fill(&r(i32::MIN, i32::MIN, i32::MAX, i32::MAX), 0x1, rop::OP_XOR);
        assert_eq!(s.px[0], 0xff0001);
        assert_eq!(s.px[2], 0x1);
        s.fill(&r(100, 100, 200, 200), 0xffffff, rop::OP_PUT);
    }

    #[test]
    fn blit_scales_clips_and_copies_bits() {
        let mut s = Surface::new(4, 4);
        let src = Pixels {
            width: 2,
            height: 2,
            px: vec![1, 2, 3, 4],
        };
        let all = r(0, 0, 2, 2);
        s.blit(
            &r(0, 0, 4, 4),
            &r(0, 0, 4, 4),
            &src,
            &all,
            Blit::Rop(rop::OP_PUT),
        );
        assert_eq!(&s.px[..4], &[1, 1, 2, 2]);
        assert_eq!(&s.px[12..], &[3, 3, 4, 4]);
        // An area outside the source draws nothing, a box outside the surface too.
        s.blit(
            &r(0, 0, 4, 4),
            &r(0, 0, 4, 4),
            &src,
            &r(5, 5, 9, 9),
            Blit::Rop(8),
        );
        s.blit(&r(0, 0, 9, 9), &r(3, 3, 9, 9), &src, &all, Blit::Rop(8));
        assert_eq!(s.px[15], 1);
        s.copy_bits(&r(0, 0, 2, 1), 2, 3, &r(0, 0, 4, 4));
        assert_eq!(&s.px[..2], &[4, 1]);
    }

    #[test]
    fn snapshot_is_not_changed_by_later_draws() {
        let mut s = Surface::new(2, 2);
        let snap = s.px.clone();
        s.fill(&r(0, 0, 2, 2), 0xabcdef, rop::OP_PUT);
        assert_eq!(snap[0], 0);
        assert_eq!(s.px[0], 0xabcdef);
    }
}

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
        // Source columns: one division per column, not per pixel. An area
        // the size of the box (no scaling, nearly always) maps x to x + dx.
        let scaled = aw != dw;
        let sx_of = |x: usize| i64::from(area.left) + (x as i64 - i64::from(dest.left)) * aw / dw;
        // Unscaled: the columns of the source row this span reads, clipped.
        let (cx0, cx1) = if scaled {
            (x0, x1)
        } else {
            let dx = i64::from(area.left) - i64::from(dest.left);
            let lo = (x0 as i64).max(-dx);
            let hi = (x1 as i64).min(sw - dx);
            if lo >= hi {
                return;
            }
            (lo as usize, hi as usize)
        };
        let cols: Vec<i64> = if scaled {
            (x0..x1).map(sx_of).collect()
        } else {
            Vec::new()
        };
        let vscaled = ah != dh;
        for y in y0..y1 {
            // No division per row either when the rows map one to one.
            let sy = if vscaled {
                i64::from(area.top) + (y as i64 - i64::from(dest.top)) * ah / dh
            } else {
                i64::from(area.top) + (y as i64 - i64::from(dest.top))
            };
            if !(0..sh).contains(&sy) {
                continue;
            }
            let srow = &src.px[sy as usize * sw as usize..(sy as usize + 1) * sw as usize];
            let drow = &mut px[y * w..(y + 1) * w];
            if !scaled {
                let sx0 = (cx0 as i64 + i64::from(area.left) - i64::from(dest.left)) as usize;
                let s = &srow[sx0..sx0 + (cx1 - cx0)];
                let d = &mut drow[cx0..cx1];
                match mode {
                    Blit::Rop(rop::OP_PUT) => {
                        for (d, s) in d.iter_mut().zip(s) {
                            *d = s & 0x00ff_ffff;
                        }
                    }
                    _ => {
                        for (d, s) in d.iter_mut().zip(s) {
                            if let Some(v) = pixel(mode, *s, *d) {
                                *d = v;
                            }
                        }
                    }
                }
                continue;
            }
            for (x, sx) in (x0..x1).zip(&cols) {
                if !(0..sw).contains(sx) {
                    continue;
                }
                let d = &mut drow[x];
                if let Some(v) = pixel(mode, srow[*sx as usize], *d) {
                    *d = v;
                }
            }
        }
    }

    /// COPY_BITS: the area at `from` moved to `r` (overlap-safe), within
    /// `clip`. Source pixels outside the surface are black. In place: rows
    /// are moved in the order that reads each before it is overwritten
    /// (a scrolling terminal moves most of the screen every line).
    pub fn copy_bits(&mut self, r: &Rect, from_x: i32, from_y: i32, clip: &Rect) {
        let Some((x0, y0, x1, y1)) = self.clip(&clip.intersect(r)) else {
            return;
        };
        let (dx, dy) = (
            i64::from(from_x) - i64::from(r.left),
            i64::from(from_y) - i64::from(r.top),
        );
        let (w, h) = (i64::from(self.width), i64::from(self.height));
        let stride = self.width as usize;
        let px = Arc::make_mut(&mut self.px);
        // The source columns inside the surface (the rest of the span is black).
        let lo = (x0 as i64).max(-dx).min(x1 as i64) as usize;
        let hi = (x1 as i64).min(w - dx).max(lo as i64) as usize;
        let mut one = |y: usize| {
            let at = y * stride;
            let sy = y as i64 + dy;
            if !(0..h).contains(&sy) || lo == hi {
                px[at + x0..at + x1].fill(0);
                return;
            }
            let from = sy as usize * stride + (lo as i64 + dx) as usize;
            px.copy_within(from..from + (hi - lo), at + lo);
            px[at + x0..at + lo].fill(0);
            px[at + hi..at + x1].fill(0);
        };
        if dy > 0 {
            (y0..y1).for_each(&mut one);
        } else {
            (y0..y1).rev().for_each(&mut one);
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

/// What a source pixel `s` makes of the destination pixel `d` (None: it
/// stays).
fn pixel(mode: Blit, s: u32, d: u32) -> Option<u32> {
    Some(match mode {
        Blit::Rop(rop_d) => apply_rop(rop_d, s, d),
        Blit::Transparent(key) => {
            if s & 0x00ff_ffff == key & 0x00ff_ffff {
                return None;
            }
            s & 0x00ff_ffff
        }
        Blit::Alpha { alpha, src_alpha } => blend(s, d, alpha, src_alpha),
    })
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

    /// The fast paths draw exactly what the per-pixel definition says, for
    /// any box, area and clip (scaled or not, partly outside everything).
    #[test]
    fn blit_matches_the_per_pixel_definition() {
        fn reference(
            s: &mut Surface,
            r: &Rect,
            dest: &Rect,
            src: &Pixels,
            area: &Rect,
            mode: Blit,
        ) {
            let (dw, dh) = (dest.width().max(1), dest.height().max(1));
            let (aw, ah) = (area.width(), area.height());
            if aw == 0 || ah == 0 || src.width == 0 || src.height == 0 {
                return;
            }
            let c = r.intersect(dest).intersect(&s.bounds());
            let w = s.width as i64;
            let px = Arc::make_mut(&mut s.px);
            for y in c.top..c.bottom {
                for x in c.left..c.right {
                    let sy = i64::from(area.top) + (i64::from(y) - i64::from(dest.top)) * ah / dh;
                    let sx = i64::from(area.left) + (i64::from(x) - i64::from(dest.left)) * aw / dw;
                    if !(0..i64::from(src.height)).contains(&sy)
                        || !(0..i64::from(src.width)).contains(&sx)
                    {
                        continue;
                    }
                    let v = src.px[(sy * i64::from(src.width) + sx) as usize];
                    let d = &mut px[(i64::from(y) * w + i64::from(x)) as usize];
                    if let Some(n) = pixel(mode, v, *d) {
                        *d = n;
                    }
                }
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: i32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % (2 * n as u64 + 1)) as i32 - n
        };
        let src = Pixels {
            width: 7,
            height: 5,
            px: (0..35).map(|i| 0xff00_0000 | (i * 0x030507)).collect(),
        };
        for _ in 0..3000 {
            let mut rect = |n: i32| {
                let (l, t) = (rnd(n), rnd(n));
                r(l, t, l + rnd(n).abs(), t + rnd(n).abs())
            };
            let (clip, dest, area) = (rect(12), rect(12), rect(8));
            let mode = match rnd(3) {
                -3 | -2 => Blit::Rop(rop::OP_PUT),
                -1 => Blit::Rop(rop::OP_XOR | rop::INVERS_SRC),
                0 => Blit::Transparent(0x030507),
                1 => Blit::Alpha {
                    alpha: 128,
                    src_alpha: false,
                },
                _ => Blit::Rop(rop::OP_AND),
            };
            let mut a = Surface::new(9, 8);
            Arc::make_mut(&mut a.px)
                .iter_mut()
                .enumerate()
                .for_each(|(i, p)| *p = i as u32 * 0x010101);
            let mut b = a.clone();
            b.px = Arc::new(a.px.to_vec());
            a.blit(&clip, &dest, &src, &area, mode);
            reference(&mut b, &clip, &dest, &src, &area, mode);
            assert_eq!(a.px, b.px, "{clip:?} {dest:?} {area:?} {mode:?}");
        }
    }

    /// In-place COPY_BITS is the copy out and back of its definition, for
    /// every direction and overlap, partly outside the surface or the clip.
    #[test]
    fn copy_bits_in_place_matches_a_copy_out_and_back() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: i32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % (2 * n as u64 + 1)) as i32 - n
        };
        for _ in 0..3000 {
            let (l, t) = (rnd(10), rnd(10));
            let dest = r(l, t, l + rnd(10).abs(), t + rnd(10).abs());
            let (fx, fy) = (rnd(12), rnd(12));
            let (cl, ct) = (rnd(10), rnd(10));
            let clip = r(cl, ct, cl + rnd(12).abs(), ct + rnd(12).abs());
            let mut a = Surface::new(9, 8);
            Arc::make_mut(&mut a.px)
                .iter_mut()
                .enumerate()
                .for_each(|(i, p)| *p = i as u32 + 1);
            let mut b = a.clone();
            b.px = Arc::new(a.px.to_vec());
            a.copy_bits(&dest, fx, fy, &clip);
            let area = r(fx, fy, fx + dest.width() as i32, fy + dest.height() as i32);
            // (The copy out refuses areas larger than the surface.)
            let Some(src) = b.extract(&area) else {
                continue;
            };
            let all = r(0, 0, src.width as i32, src.height as i32);
            b.blit(&clip, &dest, &src, &all, Blit::Rop(rop::OP_PUT));
            assert_eq!(a.px, b.px, "{dest:?} from ({fx}, {fy}) clip {clip:?}");
        }
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

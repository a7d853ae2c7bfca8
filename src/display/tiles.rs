//! Whether the primary surface's pixels changed, at the cost of what was
//! drawn: the surface is cut into 64 x 64 tiles, a draw marks the tiles it
//! touched, and [`Tiles::frame_hash`] rehashes only those. The frame's hash
//! is the fold of every tile's hash with the size, so two frames with the
//! same hash show the same pixels (up to a 64-bit collision).
//!
//! A draw that puts back the pixels that were there (a redraw of the same
//! text) leaves the hash as it was: "changed" means the pixels changed, not
//! that a draw message arrived.

use super::wire::Rect;

const TILE: usize = 64;

#[derive(Debug, Clone)]
pub struct Tiles {
    width: usize,
    height: usize,
    cols: usize,
    hashes: Vec<u64>,
    dirty: Vec<bool>,
    any_dirty: bool,
}

const K: u64 = 0x517c_c1b7_2722_0a95;

fn mix(h: u64, v: u64) -> u64 {
    (h.rotate_left(5) ^ v).wrapping_mul(K)
}

impl Tiles {
    /// Every tile dirty: the first hash covers the whole surface.
    pub fn new(width: u32, height: u32) -> Tiles {
        let (w, h) = (width as usize, height as usize);
        let cols = w.div_ceil(TILE);
        let n = cols * h.div_ceil(TILE);
        Tiles {
            width: w,
            height: h,
            cols,
            hashes: vec![0; n],
            dirty: vec![true; n],
            any_dirty: n > 0,
        }
    }

    /// Marks the tiles `r` touches (clipped to the surface).
    pub fn mark(&mut self, r: &Rect) {
        let x0 = r.left.max(0) as usize;
        let y0 = r.top.max(0) as usize;
        let x1 = (r.right.max(0) as usize).min(self.width);
        let y1 = (r.bottom.max(0) as usize).min(self.height);
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        for ty in y0 / TILE..y1.div_ceil(TILE) {
            for tx in x0 / TILE..x1.div_ceil(TILE) {
                self.dirty[ty * self.cols + tx] = true;
            }
        }
        self.any_dirty = true;
    }

    pub fn mark_all(&mut self) {
        self.dirty.fill(true);
        self.any_dirty = !self.dirty.is_empty();
    }

    /// Something was drawn since the last [`Tiles::frame_hash`].
    pub fn is_dirty(&self) -> bool {
        self.any_dirty
    }

    /// The hash of `px` (the surface these tiles cover), rehashing the dirty
    /// tiles only.
    pub fn frame_hash(&mut self, px: &[u32]) -> u64 {
        if px.len() < self.width * self.height {
            return 0;
        }
        if self.any_dirty {
            for (i, d) in self.dirty.iter_mut().enumerate() {
                if !*d {
                    continue;
                }
                *d = false;
                let (tx, ty) = (i % self.cols, i / self.cols);
                let x0 = tx * TILE;
                let x1 = (x0 + TILE).min(self.width);
                let mut h = i as u64;
                for y in ty * TILE..((ty + 1) * TILE).min(self.height) {
                    let row = &px[y * self.width + x0..y * self.width + x1];
                    let mut pairs = row.chunks_exact(2);
                    for p in &mut pairs {
                        // The top byte (alpha) is not shown: left out.
                        let v =
                            u64::from(p[0] & 0x00ff_ffff) | (u64::from(p[1] & 0x00ff_ffff) << 32);
                        h = mix(h, v);
                    }
                    if let [p] = pairs.remainder() {
                        h = mix(h, u64::from(*p & 0x00ff_ffff));
                    }
                }
                self.hashes[i] = h;
            }
            self.any_dirty = false;
        }
        let mut h = mix(self.width as u64, self.height as u64);
        for t in &self.hashes {
            h = mix(h, *t);
        }
        h
    }
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
    fn the_hash_follows_the_pixels_not_the_draws() {
        let (w, h) = (200u32, 130u32);
        let mut px = vec![0x00_10_20_30u32; (w * h) as usize];
        let mut t = Tiles::new(w, h);
        let a = t.frame_hash(&px);
        assert!(!t.is_dirty());
        // A draw that changes nothing: same hash.
        t.mark(&r(10, 10, 20, 20));
        assert_eq!(t.frame_hash(&px), a);
        // One pixel in the last, partial tile.
        px[(129 * w + 199) as usize] = 1;
        t.mark(&r(199, 129, 200, 130));
        let b = t.frame_hash(&px);
        assert_ne!(b, a);
        // Put back: the first hash again (a blink is a toggle between two).
        px[(129 * w + 199) as usize] = 0x00_10_20_30;
        t.mark(&r(150, 100, 1000, 1000));
        assert_eq!(t.frame_hash(&px), a);
        // Only the alpha byte differs: not shown, not a change.
        px[0] = 0xff_10_20_30;
        t.mark(&r(0, 0, 1, 1));
        assert_eq!(t.frame_hash(&px), a);
        // Marks outside the surface are ignored; a short buffer hashes to 0.
        t.mark(&r(-50, -50, -1, -1));
        t.mark(&r(i32::MIN, i32::MIN, i32::MAX, i32::MAX));
        assert_eq!(t.frame_hash(&px[..10]), 0);
        // Same pixels, other size: another frame.
        let mut t2 = Tiles::new(h, w);
        assert_ne!(t2.frame_hash(&px), a);
    }
}

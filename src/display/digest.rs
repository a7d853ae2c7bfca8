//! A small perceptual digest of a frame: a 64-bit difference hash. The frame
//! is sampled on a 9x8 grid of cells (16 samples each, so the cost does not
//! grow with the resolution); each bit says whether a cell is brighter than
//! its right neighbour. Frames that look alike get digests a few bits apart
//! (compare with the Hamming distance); the same frame always the same one.

/// 16 hex digits.
pub fn digest(width: u32, height: u32, px: &[u32]) -> String {
    format!("{:016x}", dhash(width, height, px))
}

pub fn dhash(width: u32, height: u32, px: &[u32]) -> u64 {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || px.len() < w * h {
        return 0;
    }
    let luma = |p: u32| {
        let [_, r, g, b] = p.to_be_bytes();
        299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b)
    };
    let mut cells = [[0u32; 9]; 8];
    for (cy, row) in cells.iter_mut().enumerate() {
        for (cx, cell) in row.iter_mut().enumerate() {
            let mut sum = 0;
            for sy in 0..4 {
                for sx in 0..4 {
                    let x = ((cx * 4 + sx) * 2 + 1) * w / (9 * 4 * 2);
                    let y = ((cy * 4 + sy) * 2 + 1) * h / (8 * 4 * 2);
                    sum += luma(px[y.min(h - 1) * w + x.min(w - 1)]);
                }
            }
            *cell = sum;
        }
    }
    let mut bits = 0u64;
    for row in &cells {
        for x in 0..8 {
            bits = (bits << 1) | u64::from(row[x] > row[x + 1]);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_frame_same_digest_and_a_change_shows() {
        let mut px = vec![0u32; 640 * 480];
        for (i, p) in px.iter_mut().enumerate() {
            *p = if (i % 640) < 320 { 0xffffff } else { 0 };
        }
        let a = digest(640, 480, &px);
        assert_eq!(a, digest(640, 480, &px.clone()));
        let flat = digest(640, 480, &vec![0x123456; 640 * 480]);
        assert_eq!(flat, "0000000000000000");
        assert_ne!(a, flat);
        assert_eq!(dhash(0, 0, &[]), 0);
    }
}

//! Frames to PNG: 8-bit RGB, no interlace, each row filtered with `Up` (a
//! screen repeats itself vertically) and deflated at zlib's fastest level
//! (a screenshot should cost about as much as one frame). Uses the deflate
//! and CRC code already in the build (flate2, crc32fast).

use std::io::Write;

/// PNG bytes for `width` x `height` pixels 0x00RRGGBB (top byte ignored).
pub fn encode(width: u32, height: u32, px: &[u32]) -> std::io::Result<Vec<u8>> {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || px.len() < w * h {
        return Err(std::io::Error::other("no frame to encode"));
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut row = vec![0u8; 1 + 3 * w];
    let mut prev = vec![0u8; 3 * w];
    let mut cur = vec![0u8; 3 * w];
    for y in 0..h {
        for (x, p) in px[y * w..(y + 1) * w].iter().enumerate() {
            let [_, r, g, b] = p.to_be_bytes();
            cur[3 * x..3 * x + 3].copy_from_slice(&[r, g, b]);
        }
        row[0] = 2; // Up
        for i in 0..3 * w {
            row[1 + i] = cur[i].wrapping_sub(prev[i]);
        }
        z.write_all(&row)?;
        std::mem::swap(&mut prev, &mut cur);
    }
    let idat = z.finish()?;
    let mut out = Vec::with_capacity(idat.len() + 64);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

fn chunk(out: &mut Vec<u8>, ty: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(ty);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(ty);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// The pixels of a PNG written by [`encode`] (8-bit RGB, filters None/Sub/
/// Up): for tests and `spiced` tools that compare frames.
pub fn decode_rgb(png: &[u8]) -> Option<(u32, u32, Vec<u32>)> {
    use std::io::Read;
    if png.get(..8)? != b"\x89PNG\r\n\x1a\n" {
        return None;
    }
    let (mut at, mut w, mut h, mut idat) = (8usize, 0u32, 0u32, Vec::new());
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().ok()?) as usize;
        let ty = &png[at + 4..at + 8];
        let data = png.get(at + 8..at + 8 + len)?;
        match ty {
            b"IHDR" => {
                w = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?);
                h = u32::from_be_bytes(data.get(4..8)?.try_into().ok()?);
                if data.get(8..10)? != [8, 2] {
                    return None;
                }
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        at += 12 + len;
    }
    let (wu, hu) = (w as usize, h as usize);
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .take(((3 * wu + 1) * hu) as u64)
        .read_to_end(&mut raw)
        .ok()?;
    let mut px = Vec::with_capacity(wu * hu);
    let mut prev = vec![0u8; 3 * wu];
    for y in 0..hu {
        let row = raw.get(y * (3 * wu + 1)..(y + 1) * (3 * wu + 1))?;
        let mut cur = row[1..].to_vec();
        for i in 0..3 * wu {
            let left = if i >= 3 { cur[i - 3] } else { 0 };
            cur[i] = match row[0] {
                0 => cur[i],
                1 => cur[i].wrapping_add(left),
                2 => cur[i].wrapping_add(prev[i]),
                _ => return None,
            };
        }
        for x in 0..wu {
            px.push(u32::from_be_bytes([
                0,
                cur[3 * x],
                cur[3 * x + 1],
                cur[3 * x + 2],
            ]));
        }
        prev = cur;
    }
    Some((w, h, px))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let px: Vec<u32> = (0..12 * 7).map(|i| (i * 0x010305) & 0xffffff).collect();
        let png = super::encode(12, 7, &px).unwrap();
        assert_eq!(super::decode_rgb(&png), Some((12, 7, px)));
        assert!(super::encode(0, 7, &[]).is_err());
    }
}

//! JPEG (images on slow links, MJPEG video frames) to pixels, through
//! zune-jpeg (pure Rust, no threads). The size is read from the headers and
//! checked against the cap before any pixel is decoded.
//!
//! spice-server's MJPEG encoder writes the Huffman tables (DHT) into the
//! first frame of a stream only; later frames are "abbreviated" and rely on
//! the decoder keeping them, as libjpeg does. [`Tables`] keeps them per
//! stream; a frame without tables and nothing kept gets the standard tables
//! of the JPEG specification (ITU T.81 Annex K.3), which is what an encoder
//! without optimised tables (spice-server's) writes anyway.

use super::image::{argb, Pixels};
use super::DecodeError;
use std::sync::Arc;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// The Huffman tables (DHT segments, markers included) of a stream's last
/// frame that had them.
#[derive(Debug, Clone, Default)]
pub struct Tables(Option<Arc<[u8]>>);

/// A whole JPEG (tables included, or the standard ones when absent).
pub fn decode(data: &[u8], max_pixels: usize) -> Result<Pixels, DecodeError> {
    decode_frame(data, &mut Tables::default(), max_pixels)
}

/// A frame of a stream: its tables are kept in `tables` when it has them,
/// taken from there when it has none.
pub fn decode_frame(
    data: &[u8],
    tables: &mut Tables,
    max_pixels: usize,
) -> Result<Pixels, DecodeError> {
    match huffman_tables(data)? {
        Some(dht) => {
            tables.0 = Some(dht.into());
            decode_whole(data, max_pixels)
        }
        None => {
            let dht: &[u8] = tables.0.as_deref().unwrap_or(&STANDARD_DHT);
            let mut full = Vec::with_capacity(data.len() + dht.len());
            full.extend_from_slice(&data[..2]);
            full.extend_from_slice(dht);
            full.extend_from_slice(&data[2..]);
            decode_whole(&full, max_pixels)
        }
    }
}

/// The DHT segments before the first scan (None: none there).
fn huffman_tables(data: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
    if data.get(..2) != Some(&[0xff, 0xd8]) {
        return Err(DecodeError::Bad("jpeg"));
    }
    let mut dht = Vec::new();
    let mut at = 2;
    loop {
        if *data.get(at).ok_or(DecodeError::Truncated)? != 0xff {
            return Err(DecodeError::Bad("jpeg marker"));
        }
        let marker = *data.get(at + 1).ok_or(DecodeError::Truncated)?;
        match marker {
            // Fill bytes.
            0xff => at += 1,
            // Start of scan: the headers are over.
            0xda => break,
            // Markers without a length.
            0x01 | 0xd0..=0xd7 => at += 2,
            _ => {
                let len = data.get(at + 2..at + 4).ok_or(DecodeError::Truncated)?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let seg = data.get(at..at + 2 + len).ok_or(DecodeError::Truncated)?;
                if marker == 0xc4 {
                    dht.extend_from_slice(seg);
                }
                at += 2 + len;
            }
        }
    }
    Ok((!dht.is_empty()).then_some(dht))
}

fn decode_whole(data: &[u8], max_pixels: usize) -> Result<Pixels, DecodeError> {
    let side = max_pixels.clamp(1, 65535);
    let opts = DecoderOptions::default()
        .set_max_width(side)
        .set_max_height(side)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut d = JpegDecoder::new_with_options(ZCursor::new(data), opts);
    d.decode_headers().map_err(|_| DecodeError::Bad("jpeg"))?;
    let info = d.info().ok_or(DecodeError::Bad("jpeg"))?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    let n = super::lz::checked_pixels(w, h, max_pixels)?;
    let size = d.output_buffer_size().ok_or(DecodeError::Bad("jpeg"))?;
    if size != n * 3 {
        return Err(DecodeError::Unsupported("jpeg colour layout"));
    }
    let mut rgb = vec![0u8; size];
    d.decode_into(&mut rgb)
        .map_err(|_| DecodeError::Bad("jpeg"))?;
    let px = rgb
        .chunks_exact(3)
        .map(|c| argb(0xff, c[0], c[1], c[2]))
        .collect();
    Ok(Pixels {
        width: w as u32,
        height: h as u32,
        px,
    })
}

/// The four standard Huffman tables (T.81 Annex K.3: luminance DC and AC,
/// chrominance DC and AC) as one DHT segment.
static STANDARD_DHT: [u8; 420] = {
    const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const DC_VALS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    const AC_LUMA_VALS: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    const AC_CHROMA_VALS: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    // FFC4, length 418, then per table: class/id, 16 counts, the values.
    let mut out = [0u8; 420];
    out[0] = 0xff;
    out[1] = 0xc4;
    out[2] = (418 >> 8) as u8;
    out[3] = (418 & 0xff) as u8;
    let mut at = 4;
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUMA_BITS, &DC_VALS),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALS),
        (0x01, &DC_CHROMA_BITS, &DC_VALS),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALS),
    ];
    let mut t = 0;
    while t < 4 {
        let (class, bits, vals) = tables[t];
        out[at] = class;
        at += 1;
        let mut i = 0;
        while i < 16 {
            out[at] = bits[i];
            at += 1;
            i += 1;
        }
        let mut i = 0;
        while i < vals.len() {
            out[at] = vals[i];
            at += 1;
            i += 1;
        }
        t += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of a real MJPEG stream (spice-server 0.15, QEMU with
    /// `streaming-video=all` and the vga-noise guest) that carries no DHT.
    const ABBREVIATED: &[u8] =
        include_bytes!("../../tests/fixtures/display/mjpeg-frame-without-dht.jpg");

    #[test]
    fn a_frame_without_huffman_tables_uses_the_streams_or_the_standard_ones() {
        assert_eq!(huffman_tables(ABBREVIATED), Ok(None));
        // zune-jpeg alone refuses it.
        assert!(decode_whole(ABBREVIATED, 1 << 22).is_err());
        let mut kept = Tables::default();
        let p = decode_frame(ABBREVIATED, &mut kept, 1 << 22).unwrap();
        assert!(p.width > 0 && p.height > 0);
        assert!(kept.0.is_none(), "nothing to keep");
        // The same frame with the tables spliced in is a whole JPEG whose
        // tables are kept for the next frame, and decodes the same.
        let mut whole = ABBREVIATED[..2].to_vec();
        whole.extend_from_slice(&STANDARD_DHT);
        whole.extend_from_slice(&ABBREVIATED[2..]);
        assert_eq!(decode_frame(&whole, &mut kept, 1 << 22).unwrap(), p);
        assert_eq!(kept.0.as_deref(), Some(&STANDARD_DHT[..]));
        assert_eq!(decode_frame(ABBREVIATED, &mut kept, 1 << 22).unwrap(), p);
    }

    #[test]
    fn broken_headers_are_errors_not_panics() {
        let mut t = Tables::default();
        for bad in [
            &[][..],
            &[0xff, 0xd8],
            &[0xff, 0xd8, 0x00],
            &[0xff, 0xd8, 0xff, 0xc4, 0xff, 0xff],
            &[0xff, 0xd8, 0xff, 0xff, 0xff],
            &ABBREVIATED[..40],
        ] {
            assert!(decode_frame(bad, &mut t, 1 << 22).is_err());
        }
    }
}

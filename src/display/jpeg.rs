//! JPEG (images on slow links, MJPEG video frames) to pixels, through
//! zune-jpeg (pure Rust, no threads). The size is read from the headers and
//! checked against the cap before any pixel is decoded.

use super::image::{argb, Pixels};
use super::DecodeError;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

pub fn decode(data: &[u8], max_pixels: usize) -> Result<Pixels, DecodeError> {
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

//! The mirror over hand-built display messages (layouts as spice-server
//! marshals them), hostile ones included.
//!
//! Test code only: the parent declares this module under #[cfg(test)].

use super::wire::msg;
use super::*;

const T: Duration = Duration::from_secs(1);

pub fn surface_create(id: u32, w: u32, h: u32, primary: bool) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [id, w, h, 32, u32::from(primary)] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn rect(b: &mut Vec<u8>, l: i32, t: i32, r: i32, bt: i32) {
    for v in [t, l, bt, r] {
        b.extend_from_slice(&v.to_le_bytes());
    }
}

fn base(surface: u32, l: i32, t: i32, r: i32, bt: i32) -> Vec<u8> {
    let mut b = surface.to_le_bytes().to_vec();
    rect(&mut b, l, t, r, bt);
    b.push(0); // no clip
    b
}

pub fn fill(surface: u32, l: i32, t: i32, r: i32, bt: i32, color: u32) -> Vec<u8> {
    let mut b = base(surface, l, t, r, bt);
    b.push(1);
    b.extend_from_slice(&color.to_le_bytes());
    b.extend_from_slice(&8u16.to_le_bytes()); // OP_PUT
    b.extend_from_slice(&[0; 13]); // no mask
    b
}

/// DRAW_COPY of a 32-bit top-down bitmap `w` x `h` (pixels given) at (l, t).
pub fn copy_bitmap(
    surface: u32,
    l: i32,
    t: i32,
    w: u32,
    h: u32,
    px: &[u32],
    cache: Option<u64>,
) -> Vec<u8> {
    let mut b = base(surface, l, t, l + w as i32, t + h as i32);
    let img_ptr_at = b.len();
    b.extend_from_slice(&0u32.to_le_bytes());
    rect(&mut b, 0, 0, w as i32, h as i32);
    b.extend_from_slice(&8u16.to_le_bytes());
    b.push(0);
    b.extend_from_slice(&[0; 13]);
    let img = b.len() as u32;
    b[img_ptr_at..img_ptr_at + 4].copy_from_slice(&img.to_le_bytes());
    b.extend_from_slice(&cache.unwrap_or(0).to_le_bytes());
    b.push(image::kind::BITMAP);
    b.push(if cache.is_some() { 1 } else { 0 });
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.push(8); // 32BIT
    b.push(4); // top-down
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&(w * 4).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // no palette
    for p in px {
        b.extend_from_slice(&p.to_le_bytes());
    }
    b
}

/// COPY_BITS of the box (l, t)-(r, b) from (x, y).
fn copy_bits(surface: u32, l: i32, t: i32, r: i32, bt: i32, x: i32, y: i32) -> Vec<u8> {
    let mut b = base(surface, l, t, r, bt);
    b.extend_from_slice(&x.to_le_bytes());
    b.extend_from_slice(&y.to_le_bytes());
    b
}

/// DRAW_COPY of the cached image `id`.
fn copy_cached(surface: u32, l: i32, t: i32, w: u32, h: u32, id: u64) -> Vec<u8> {
    let mut b = base(surface, l, t, l + w as i32, t + h as i32);
    let img = (b.len() + 4 + 16 + 2 + 1 + 13) as u32;
    b.extend_from_slice(&img.to_le_bytes());
    rect(&mut b, 0, 0, w as i32, h as i32);
    b.extend_from_slice(&8u16.to_le_bytes());
    b.push(0);
    b.extend_from_slice(&[0; 13]);
    b.extend_from_slice(&id.to_le_bytes());
    b.push(image::kind::FROM_CACHE);
    b.push(0);
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b
}

fn mirror() -> Mirror {
    Mirror::new(Limits::default())
}

#[test]
fn draws_fill_and_copy_on_the_primary() {
    let mut m = mirror();
    assert!(m.frame().is_none());
    m.on_message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), T);
    m.on_message(msg::DRAW_FILL, &fill(0, 0, 0, 8, 4, 0x00ff00), T * 2);
    let px: Vec<u32> = (0..4).map(|i| 0x10 * (i + 1)).collect();
    m.on_message(
        msg::DRAW_COPY,
        &copy_bitmap(0, 2, 1, 2, 2, &px, Some(7)),
        T * 3,
    );
    let f = m.frame().unwrap();
    assert_eq!((f.width, f.height), (8, 4));
    assert_eq!(f.px[0], 0x00ff00);
    assert_eq!(f.px[8 + 2], 0x10);
    assert_eq!(f.px[16 + 3], 0x40);
    assert_eq!(f.drawn_at, Some(T * 3));
    // From the cache, elsewhere.
    m.on_message(msg::DRAW_COPY, &copy_cached(0, 6, 2, 2, 2, 7), T * 4);
    let f = m.frame().unwrap();
    assert_eq!(f.px[16 + 6], 0x10);
    assert!(m.stats().skipped.is_empty(), "{:?}", m.stats().skipped);
    // A PNG of it decodes to the same pixels.
    let (w, h, back) = png::decode_rgb(&f.png().unwrap()).unwrap();
    assert_eq!((w, h), (8, 4));
    assert_eq!(back, f.px.iter().map(|p| p & 0xffffff).collect::<Vec<_>>());
}

#[test]
fn off_screen_draws_do_not_change_the_screen() {
    let mut m = mirror();
    m.on_message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), T);
    m.on_message(msg::SURFACE_CREATE, &surface_create(5, 4, 4, false), T);
    m.on_message(msg::DRAW_FILL, &fill(5, 0, 0, 4, 4, 0xff), T * 9);
    assert_eq!(m.frame().unwrap().drawn_at, Some(T));
}

#[test]
fn hostile_messages_are_clipped_refused_and_counted() {
    let mut m = mirror();
    // A huge surface: refused, nothing allocated.
    m.on_message(
        msg::SURFACE_CREATE,
        &surface_create(0, 100_000, 100_000, true),
        T,
    );
    assert!(m.frame().is_none());
    assert_eq!(m.stats().surfaces_refused, 1);
    m.on_message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), T);
    // Out of bounds: clipped.
    m.on_message(msg::DRAW_FILL, &fill(0, -100, -100, 100_000, 3, 0xff), T);
    m.on_message(
        msg::DRAW_FILL,
        &fill(0, i32::MIN, i32::MIN, i32::MAX, i32::MAX, 1),
        T,
    );
    // A source area past its image, a cache id never defined, a truncated
    // image, a draw on a surface that does not exist.
    let mut lying = copy_bitmap(0, 0, 0, 2, 2, &[1, 2, 3, 4], None);
    lying[25 + 4..25 + 8].copy_from_slice(&1000i32.to_le_bytes());
    m.on_message(msg::DRAW_COPY, &lying, T);
    m.on_message(msg::DRAW_COPY, &copy_cached(0, 0, 0, 2, 2, 99), T);
    let full = copy_bitmap(0, 0, 0, 2, 2, &[1, 2, 3, 4], None);
    m.on_message(msg::DRAW_COPY, &full[..full.len() - 3], T);
    m.on_message(msg::DRAW_FILL, &fill(42, 0, 0, 1, 1, 0), T);
    for t in [0u16, 101, 104, 122, 123, 302, 303, 304, 313, 314, 316, 999] {
        for body in [&[][..], &[0xff; 7][..], &[0; 60][..]] {
            m.on_message(t, body, T);
        }
    }
    let s = m.stats();
    assert!(
        s.skipped.contains_key("copy: missing cached image"),
        "{:?}",
        s.skipped
    );
    assert!(
        s.skipped.contains_key("fill: missing target surface"),
        "{:?}",
        s.skipped
    );
    assert!(m.extra_bytes() <= Limits::default().offscreen_bytes + (3 << 20));
}

#[test]
fn off_screen_surfaces_and_caches_stay_under_their_caps() {
    let limits = Limits {
        offscreen_bytes: 4096,
        pixmap_cache_bytes: 1024,
        ..Limits::default()
    };
    let mut m = Mirror::new(limits);
    m.on_message(msg::SURFACE_CREATE, &surface_create(0, 64, 64, true), T);
    for id in 1..100 {
        m.on_message(msg::SURFACE_CREATE, &surface_create(id, 16, 16, false), T);
    }
    for id in 1..100u64 {
        let px = vec![id as u32; 64];
        m.on_message(
            msg::DRAW_COPY,
            &copy_bitmap(0, 0, 0, 8, 8, &px, Some(id)),
            T,
        );
    }
    assert!(m.extra_bytes() <= 4096 + 1024, "{}", m.extra_bytes());
    assert!(m.stats().surfaces_refused > 0);
    m.shrink();
    assert_eq!(m.extra_bytes(), 0);
    assert!(m.frame().is_some());
}

#[test]
fn a_new_primary_replaces_the_old_and_destroy_forgets_it() {
    let mut m = mirror();
    m.on_message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), T);
    m.on_message(msg::SURFACE_CREATE, &surface_create(3, 16, 8, true), T);
    assert_eq!(m.frame().unwrap().width, 16);
    m.on_message(msg::SURFACE_DESTROY, &3u32.to_le_bytes(), T);
    assert!(m.frame().is_none());
}

/// Opaque copies wait until someone looks; one that covers earlier ones
/// drops them undecoded. What is drawn in the end is what drawing them all
/// in order gives: anything else (a fill here) draws the waiting ones first.
#[test]
fn covered_copies_are_never_decoded_and_order_is_kept() {
    let mut m = mirror();
    m.on_message(msg::SURFACE_CREATE, &surface_create(0, 8, 4, true), T);
    for i in 0..10u32 {
        let px = vec![i; 8 * 4];
        let t = m.on_message(msg::DRAW_COPY, &copy_bitmap(0, 0, 0, 8, 4, &px, None), T);
        assert_eq!(t, Touch::Drawn);
    }
    // A copy that covers half: it keeps the last full one.
    m.on_message(
        msg::DRAW_COPY,
        &copy_bitmap(0, 4, 0, 4, 4, &[77; 16], None),
        T,
    );
    assert_eq!(m.stats().culled, 9);
    assert!(m.extra_bytes() > 0, "the waiting copies are accounted for");
    // A fill waits too, after them; COPY_BITS reads the screen: all of
    // them are drawn first, in order.
    m.on_message(msg::DRAW_FILL, &fill(0, 0, 0, 1, 1, 0xabcdef), T * 2);
    m.on_message(msg::COPY_BITS, &copy_bits(0, 2, 3, 3, 4, 5, 3), T * 2);
    let f = m.frame().unwrap();
    assert_eq!(f.px[0], 0xabcdef);
    assert_eq!(f.px[1], 9);
    assert_eq!(f.px[5], 77);
    assert_eq!(
        f.px[3 * 8 + 2],
        77,
        "COPY_BITS moved what the copies painted"
    );
    assert_eq!(m.stats().draws, 13);
    // A cached image goes into the cache at once (a later copy uses it).
    m.on_message(
        msg::DRAW_COPY,
        &copy_bitmap(0, 0, 0, 2, 2, &[5; 4], Some(3)),
        T,
    );
    m.on_message(msg::DRAW_COPY, &copy_cached(0, 6, 2, 2, 2, 3), T);
    let f = m.frame().unwrap();
    assert_eq!(f.px[2 * 8 + 6], 5);
    // The buffer the waiting draws were kept in stays (reused), counted.
    assert!(m.extra_bytes() >= 16 && m.extra_bytes() <= 16 + 512 * 1024);
    m.shrink();
    assert_eq!(m.extra_bytes(), 0);
}

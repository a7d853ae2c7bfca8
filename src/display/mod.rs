//! The display mirror (sans-IO, like `channel`): display channel messages and
//! the time in; surfaces, when the screen last changed, a small digest and
//! the current frame out. The channel keeps its own job (answer the server,
//! keep the link alive); the mirror only draws.
//!
//! Bounded by [`Limits`]: surfaces (count, size, off-screen bytes), the
//! pixmap cache and the GLZ window are capped; a draw outside its surface is
//! clipped; what the mirror cannot decode or draw is counted (and logged once
//! per kind), never a panic. See docs/display.md.

pub mod control;
pub mod dashboard;
pub mod digest;
pub mod fresh;
pub mod image;
pub mod jpeg;
pub mod lz;
pub mod png;
pub mod screen;
pub mod surface;
pub mod tiles;
pub mod wire;

use image::{Caches, Pixels, Source};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use surface::{rop, Blit, Surface};
use wire::{msg, Body, Brush, Rect};

/// Why an image or a message could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    TooLarge,
    Bad(&'static str),
    /// Something referred to (a cached image, a palette, a surface) is gone.
    Missing(&'static str),
    /// Valid, but not something the mirror decodes (QUIC, LZ4, composite...).
    Unsupported(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("truncated"),
            DecodeError::TooLarge => f.write_str("over the mirror's size cap"),
            DecodeError::Bad(w) => write!(f, "malformed {w}"),
            DecodeError::Missing(w) => write!(f, "missing {w}"),
            DecodeError::Unsupported(w) => write!(f, "not decoded: {w}"),
        }
    }
}

/// The caps. A hostile server costs at most these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Surfaces alive at once.
    pub max_surfaces: usize,
    /// Pixels of any one surface (the primary included) and of any image.
    pub max_surface_pixels: usize,
    /// Bytes of all off-screen surfaces together.
    pub offscreen_bytes: usize,
    /// Bytes of cached images (spiced tells the server a quarter of it in
    /// pixels, its unit).
    pub pixmap_cache_bytes: usize,
    /// Bytes of the GLZ window (likewise told in pixels).
    pub glz_window_bytes: usize,
    /// Video streams at once.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_surfaces: 1024,
            // 4096 x 4096: a 4K screen fits.
            max_surface_pixels: 4096 * 4096,
            offscreen_bytes: 512 * 1024,
            pixmap_cache_bytes: 1024 * 1024,
            glz_window_bytes: 512 * 1024,
            max_streams: 64,
        }
    }
}

impl Limits {
    /// DISPLAY_INIT's pixmap cache size, in pixels.
    pub fn pixmap_cache_pixels(&self) -> i64 {
        (self.pixmap_cache_bytes / 4) as i64
    }
    /// DISPLAY_INIT's GLZ window size, in pixels.
    pub fn glz_window_pixels(&self) -> i32 {
        i32::try_from(self.glz_window_bytes / 4).unwrap_or(i32::MAX)
    }
}

/// What the mirror has done, for status, metrics and reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MirrorStats {
    pub messages: u64,
    pub draws: u64,
    pub images: u64,
    pub stream_frames: u64,
    /// Draws, images and messages not decoded or drawn, by kind.
    pub skipped: BTreeMap<String, u64>,
    pub surfaces_refused: u64,
    /// Image copies never decoded: a later copy covered them before anyone
    /// looked at the screen.
    pub culled: u64,
}

/// A DRAW_COPY or DRAW_FILL kept undrawn until someone looks, or until it
/// is covered.
#[derive(Debug)]
struct Deferred {
    ty: u16,
    /// Where its message body is in the mirror's buffer of them.
    body: std::ops::Range<usize>,
    bbox: Rect,
    now: Duration,
}

/// Deferred copies kept at most (beyond: all drawn).
const MAX_DEFERRED: usize = 1024;
const MAX_DEFERRED_BYTES: usize = 512 * 1024;

/// What one message did to the primary surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    None,
    /// Drawn on (its pixels may or may not have changed).
    Drawn,
    /// A new primary surface (a mode change, the first after a link).
    Created,
}

/// A video stream the server started (MJPEG: spiced advertises no other codec).
#[derive(Debug, Clone)]
struct Stream {
    surface: u32,
    dest: Rect,
    clip: Option<Vec<Rect>>,
    top_down: bool,
    codec: u8,
    /// The Huffman tables of the stream's first frame (later frames omit them).
    tables: jpeg::Tables,
}

/// The frame of the primary surface at one moment.
#[derive(Debug, Clone)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub px: Arc<Vec<u32>>,
    /// When it was last drawn (time since the mirror's session started).
    pub drawn_at: Option<Duration>,
}

impl Frame {
    pub fn png(&self) -> std::io::Result<Vec<u8>> {
        png::encode(self.width, self.height, &self.px)
    }
    pub fn digest(&self) -> String {
        digest::digest(self.width, self.height, &self.px)
    }
}

pub struct Mirror {
    limits: Limits,
    surfaces: HashMap<u32, Surface>,
    primary: Option<u32>,
    caches: Caches,
    streams: HashMap<u32, Stream>,
    stats: MirrorStats,
    drawn_at: Option<Duration>,
    /// The primary surface's tiles (what changed since the last look).
    tiles: Option<tiles::Tiles>,
    /// What the message being handled did to the primary surface.
    touch: Touch,
    /// Opaque draws onto the primary surface not drawn yet (see
    /// [`Mirror::defer`]), their message bodies back to back (one buffer,
    /// reused: no allocation per message).
    deferred: std::collections::VecDeque<Deferred>,
    deferred_buf: Vec<u8>,
    /// Drawing the deferred copies: they were counted and marked already.
    replaying: bool,
    /// Kinds already logged (each once per mirror).
    logged: std::collections::HashSet<String>,
}

const SURFACE_PRIMARY: u32 = 1;
const MAX_STREAM_CLIP_RECTS: u32 = 256;

impl Mirror {
    pub fn new(limits: Limits) -> Mirror {
        Mirror {
            caches: Caches::new(
                limits.pixmap_cache_bytes,
                limits.glz_window_bytes,
                limits.max_surface_pixels,
            ),
            limits,
            surfaces: HashMap::new(),
            primary: None,
            streams: HashMap::new(),
            stats: MirrorStats::default(),
            drawn_at: None,
            tiles: None,
            touch: Touch::None,
            deferred: Default::default(),
            deferred_buf: Vec::new(),
            replaying: false,
            logged: Default::default(),
        }
    }

    pub fn stats(&self) -> &MirrorStats {
        &self.stats
    }

    /// When the primary surface was last drawn (a draw that changed no
    /// pixel included; see [`Mirror::frame_hash`] for what changed).
    pub fn drawn_at(&self) -> Option<Duration> {
        self.drawn_at
    }

    /// The hash of the primary surface's pixels now (rehashing only what was
    /// drawn since the last call); None without a primary surface.
    pub fn frame_hash(&mut self) -> Option<u64> {
        self.flush();
        let s = self.surfaces.get(&self.primary?)?;
        let t = self.tiles.as_mut()?;
        Some(t.frame_hash(&s.px))
    }

    /// Bytes held beside the primary surface: off-screen surfaces and caches.
    pub fn extra_bytes(&self) -> usize {
        self.offscreen_bytes() + self.caches.bytes() + self.deferred_buf.capacity()
    }

    fn offscreen_bytes(&self) -> usize {
        self.surfaces
            .iter()
            .filter(|(id, _)| Some(**id) != self.primary)
            .map(|(_, s)| s.px.len() * 4)
            .sum()
    }

    /// The primary surface now (shares its pixels until the next draw).
    pub fn frame(&mut self) -> Option<Frame> {
        self.flush();
        let s = self.surfaces.get(&self.primary?)?;
        Some(Frame {
            width: s.width,
            height: s.height,
            px: s.px.clone(),
            drawn_at: self.drawn_at,
        })
    }

    /// The channel ended: keep the primary only, free the rest.
    pub fn shrink(&mut self) {
        self.flush();
        let primary = self.primary.and_then(|p| self.surfaces.remove(&p));
        self.surfaces.clear();
        if let (Some(id), Some(s)) = (self.primary, primary) {
            self.surfaces.insert(id, s);
        }
        self.surfaces.shrink_to_fit();
        self.caches = Caches::new(0, 0, 0);
        self.streams.clear();
        self.deferred = Default::default();
        self.deferred_buf = Vec::new();
    }

    fn skip(&mut self, what: &str, why: &DecodeError) {
        let key = match why {
            DecodeError::Unsupported(w) => format!("{what}: {w}"),
            DecodeError::Missing(w) => format!("{what}: missing {w}"),
            DecodeError::TooLarge => format!("{what}: over the cap"),
            _ => format!("{what}: malformed"),
        };
        if self.logged.len() < 64 && self.logged.insert(key.clone()) {
            tracing::info!("display mirror: {key} ({why}); counted from now on, not logged again");
        }
        *self.stats.skipped.entry(key).or_insert(0) += 1;
    }

    /// One server message of the display channel (`body` without its header).
    /// Says what it did to the primary surface.
    pub fn on_message(&mut self, msg_type: u16, body: &[u8], now: Duration) -> Touch {
        self.stats.messages += 1;
        self.touch = Touch::None;
        if matches!(msg_type, msg::DRAW_COPY | msg::DRAW_FILL) && self.defer(msg_type, body, now) {
            return self.touch;
        }
        // Anything else may read what the deferred copies paint: they go first.
        self.flush();
        let b = Body(body);
        let r = match msg_type {
            msg::SURFACE_CREATE => self.surface_create(&b, now),
            msg::SURFACE_DESTROY => b.u32(0).map(|id| {
                self.surfaces.remove(&id);
                if self.primary == Some(id) {
                    self.primary = None;
                    self.tiles = None;
                }
            }),
            msg::RESET => {
                if let Some(p) = self.primary {
                    if let Some(s) = self.surfaces.get_mut(&p) {
                        let r = s.bounds();
                        s.fill(&r, 0, rop::OP_PUT);
                        self.touched(p, &r, now);
                    }
                }
                self.caches.clear_palettes();
                Ok(())
            }
            msg::INVAL_LIST => self.inval_list(&b),
            msg::INVAL_ALL_PIXMAPS => {
                self.caches.clear_pixmaps();
                Ok(())
            }
            msg::INVAL_PALETTE => b.u64(0).map(|id| self.caches.drop_palette(id)),
            msg::INVAL_ALL_PALETTES => {
                self.caches.clear_palettes();
                Ok(())
            }
            msg::COPY_BITS => self.copy_bits(&b, now),
            msg::DRAW_FILL
            | msg::DRAW_OPAQUE
            | msg::DRAW_COPY
            | msg::DRAW_BLEND
            | msg::DRAW_BLACKNESS
            | msg::DRAW_WHITENESS
            | msg::DRAW_INVERS
            | msg::DRAW_ROP3
            | msg::DRAW_TRANSPARENT
            | msg::DRAW_ALPHA_BLEND => self.draw(msg_type, &b, now),
            msg::DRAW_STROKE => Err(DecodeError::Unsupported("stroke")),
            msg::DRAW_TEXT => Err(DecodeError::Unsupported("text")),
            msg::DRAW_COMPOSITE => Err(DecodeError::Unsupported("composite")),
            msg::STREAM_CREATE => self.stream_create(&b),
            msg::STREAM_DATA => self.stream_data(&b, false, now),
            msg::STREAM_DATA_SIZED => self.stream_data(&b, true, now),
            msg::STREAM_CLIP => self.stream_clip(&b),
            msg::STREAM_DESTROY => b.u32(0).map(|id| {
                self.streams.remove(&id);
            }),
            msg::STREAM_DESTROY_ALL => {
                self.streams.clear();
                Ok(())
            }
            msg::GL_SCANOUT_UNIX | msg::GL_DRAW => Err(DecodeError::Unsupported("gl")),
            // MARK, MODE, MONITORS_CONFIG, stream reports, quality, the common
            // messages: nothing to draw.
            _ => Ok(()),
        };
        if let Err(e) = r {
            self.skip(msg_name(msg_type), &e);
        }
        self.touch
    }

    /// Keeps a draw undrawn when it can wait: an opaque one (OP_PUT, no
    /// mask) onto the primary surface, a solid fill or a copy of a
    /// self-contained image (LZ RGB, JPEG, a bitmap without palette) that no
    /// cache keeps. Nothing reads what it paints until the next message of
    /// another kind, or until someone looks at the screen; a later such draw
    /// that paints all of its box drops the earlier ones inside that box,
    /// never decoded. A screen redrawn many times a second (video, the
    /// vga-noise guest's ~30 full screens a second, a terminal redrawing its
    /// lines) is then decoded only as often as it is looked at (every 500 ms
    /// at most, see `fresh`). False: draw it now.
    fn defer(&mut self, ty: u16, body: &[u8], now: Duration) -> bool {
        let b = Body(body);
        let r = match ty {
            msg::DRAW_FILL => self.deferrable_fill(&b),
            _ => self.deferrable(&b),
        };
        let Some((bbox, covers)) = r else {
            return false;
        };
        if covers {
            let before = self.deferred.len();
            self.deferred.retain(|d| d.bbox.intersect(&bbox) != d.bbox);
            self.stats.culled += (before - self.deferred.len()) as u64;
        }
        if self.deferred.len() >= MAX_DEFERRED
            || self.deferred_buf.len() + body.len() > MAX_DEFERRED_BYTES
        {
            self.flush();
        }
        // (A body over the cap on its own is drawn now.)
        if body.len() > MAX_DEFERRED_BYTES {
            return false;
        }
        let at = self.deferred_buf.len();
        self.deferred_buf.extend_from_slice(body);
        self.deferred.push_back(Deferred {
            ty,
            body: at..at + body.len(),
            bbox,
            now,
        });
        if let Some(p) = self.primary {
            self.touched(p, &bbox, now);
        }
        true
    }

    /// The box of a copy that may wait (see [`Mirror::defer`]), and whether
    /// it paints all of it.
    fn deferrable(&self, b: &Body<'_>) -> Option<(Rect, bool)> {
        let base = wire::base(b).ok()?;
        if Some(base.surface) != self.primary || !self.surfaces.contains_key(&base.surface) {
            return None;
        }
        let src = wire::src_area(b, base.end).ok()?;
        let rop_d = b.u16(base.end + 20).ok()?;
        if rop_d != rop::OP_PUT || wire::has_mask(b, base.end + 23).ok()? {
            return None;
        }
        let at = src.image;
        let (ty, flags) = (b.u8(at + 8).ok()?, b.u8(at + 9).ok()?);
        let (w, h) = (b.u32(at + 10).ok()?, b.u32(at + 14).ok()?);
        let self_contained = match ty {
            image::kind::LZ_RGB | image::kind::JPEG => true,
            // 24 and 32 bits: no palette.
            image::kind::BITMAP => matches!(b.u8(at + 18).ok()?, 7..=9),
            _ => false,
        };
        // Cached images must reach the cache in order.
        if !self_contained || flags & (image::IMAGE_CACHE_ME | image::IMAGE_CACHE_REPLACE_ME) != 0 {
            return None;
        }
        let a = src.area;
        let covers = base.clip.is_none()
            && a.width() == base.bbox.width()
            && a.height() == base.bbox.height()
            && a.left >= 0
            && a.top >= 0
            && i64::from(a.right) <= i64::from(w)
            && i64::from(a.bottom) <= i64::from(h);
        Some((base.bbox, covers))
    }

    /// The box of a fill that may wait: solid, OP_PUT, no mask, on the
    /// primary surface; it paints all of its box without a clip.
    fn deferrable_fill(&self, b: &Body<'_>) -> Option<(Rect, bool)> {
        let base = wire::base(b).ok()?;
        if Some(base.surface) != self.primary || !self.surfaces.contains_key(&base.surface) {
            return None;
        }
        let (brush, next) = wire::brush(b, base.end).ok()?;
        let rop_d = b.u16(next).ok()?;
        if !matches!(brush, Brush::Solid(_))
            || rop_d != rop::OP_PUT
            || wire::has_mask(b, next + 2).ok()?
        {
            return None;
        }
        Some((base.bbox, base.clip.is_none()))
    }

    /// Draws the deferred copies, oldest first.
    fn flush(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        self.replaying = true;
        let mut buf = std::mem::take(&mut self.deferred_buf);
        while let Some(d) = self.deferred.pop_front() {
            let body = buf.get(d.body).unwrap_or_default();
            if let Err(e) = self.draw(d.ty, &Body(body), d.now) {
                self.skip(msg_name(d.ty), &e);
            }
        }
        buf.clear();
        self.deferred_buf = buf;
        self.replaying = false;
    }

    fn surface_create(&mut self, b: &Body<'_>, now: Duration) -> Result<(), DecodeError> {
        let id = b.u32(0)?;
        let (w, h) = (b.u32(4)?, b.u32(8)?);
        let flags = b.u32(16)?;
        let primary = flags & SURFACE_PRIMARY != 0;
        let n = lz::checked_pixels(w as usize, h as usize, self.limits.max_surface_pixels)
            .map_err(|_| DecodeError::TooLarge);
        let fits = n.as_ref().is_ok_and(|n| {
            primary
                || (self.surfaces.len() < self.limits.max_surfaces
                    && self.offscreen_bytes() + n * 4 <= self.limits.offscreen_bytes)
        });
        if !fits {
            self.stats.surfaces_refused += 1;
            self.surfaces.remove(&id);
            return Err(n.err().unwrap_or(DecodeError::TooLarge));
        }
        self.surfaces.insert(id, Surface::new(w, h));
        if primary {
            if let Some(old) = self.primary.filter(|p| *p != id) {
                self.surfaces.remove(&old);
            }
            self.primary = Some(id);
            self.tiles = Some(tiles::Tiles::new(w, h));
            self.drawn_at = Some(now);
            self.touch = Touch::Created;
        } else if self.primary == Some(id) {
            // The primary's id reused for an off-screen surface.
            self.primary = None;
            self.tiles = None;
        }
        Ok(())
    }

    fn inval_list(&mut self, b: &Body<'_>) -> Result<(), DecodeError> {
        let n = usize::from(b.u16(0)?);
        for i in 0..n {
            // ResourceID: type u8, id u64 (packed).
            let id = b.u64(2 + 9 * i + 1)?;
            self.caches.drop_pixmap(id);
        }
        Ok(())
    }

    /// The rectangles a draw may touch: the box, cut by each clip rectangle.
    fn regions(base: &wire::Base) -> Vec<Rect> {
        match &base.clip {
            None => vec![base.bbox],
            Some(rs) => rs.iter().map(|r| r.intersect(&base.bbox)).collect(),
        }
    }

    /// A draw on `surface` within `area`.
    fn touched(&mut self, surface: u32, area: &Rect, now: Duration) {
        if self.replaying {
            return;
        }
        self.stats.draws += 1;
        if Some(surface) == self.primary {
            self.drawn_at = Some(now);
            if let Some(t) = &mut self.tiles {
                t.mark(area);
            }
            if self.touch == Touch::None {
                self.touch = Touch::Drawn;
            }
        }
    }

    /// An image as pixels (a surface's area copied out).
    fn source(&mut self, b: &Body<'_>, at: usize, area: &Rect) -> Result<Arc<Pixels>, DecodeError> {
        if at == 0 {
            return Err(DecodeError::Missing("source image"));
        }
        match self.caches.image(b, at)? {
            Source::Pixels(p) => {
                self.stats.images += 1;
                Ok(p)
            }
            Source::Surface(id) => {
                let s = self
                    .surfaces
                    .get(&id)
                    .ok_or(DecodeError::Missing("source surface"))?;
                // Only the area is copied; it is then drawn from (0, 0).
                let p = s.extract(area).ok_or(DecodeError::Bad("source area"))?;
                Ok(Arc::new(p))
            }
        }
    }

    fn draw(&mut self, ty: u16, b: &Body<'_>, now: Duration) -> Result<(), DecodeError> {
        let base = wire::base(b)?;
        if !self.surfaces.contains_key(&base.surface) {
            return Err(DecodeError::Missing("target surface"));
        }
        let at = base.end;
        let regions = Self::regions(&base);
        let bbox = base.bbox;
        match ty {
            msg::DRAW_FILL => {
                let (brush, next) = wire::brush(b, at)?;
                let rop_d = b.u16(next)?;
                if wire::has_mask(b, next + 2)? {
                    self.skip("fill", &DecodeError::Unsupported("mask (drawn unmasked)"));
                }
                let color = match brush {
                    Brush::Solid(c) => c,
                    Brush::None => return Ok(()),
                    Brush::Pattern { .. } => return Err(DecodeError::Unsupported("pattern brush")),
                };
                let s = self.target(base.surface)?;
                for r in &regions {
                    s.fill(r, color, rop_d);
                }
            }
            msg::DRAW_BLACKNESS | msg::DRAW_WHITENESS | msg::DRAW_INVERS => {
                let rop_d = match ty {
                    msg::DRAW_BLACKNESS => rop::OP_BLACKNESS,
                    msg::DRAW_WHITENESS => rop::OP_WHITENESS,
                    _ => rop::OP_INVERS,
                };
                let s = self.target(base.surface)?;
                for r in &regions {
                    s.fill(r, 0, rop_d);
                }
            }
            _ => {
                let (src, mode) = match ty {
                    msg::DRAW_ALPHA_BLEND => {
                        let flags = b.u8(at)?;
                        let alpha = b.u8(at + 1)?;
                        let src = wire::src_area(b, at + 2)?;
                        let mode = Blit::Alpha {
                            alpha,
                            src_alpha: flags & 2 != 0,
                        };
                        (src, mode)
                    }
                    msg::DRAW_TRANSPARENT => {
                        let src = wire::src_area(b, at)?;
                        (src, Blit::Transparent(b.u32(at + 20)?))
                    }
                    msg::DRAW_OPAQUE | msg::DRAW_ROP3 => {
                        // Drawn as a copy: the brush part is rare for QXL
                        // guests and X desktops, and counted.
                        let src = wire::src_area(b, at)?;
                        self.skip(
                            msg_name(ty),
                            &DecodeError::Unsupported("brush (drawn as a copy)"),
                        );
                        (src, Blit::Rop(rop::OP_PUT))
                    }
                    _ => {
                        let src = wire::src_area(b, at)?;
                        let rop_d = b.u16(at + 20)?;
                        if wire::has_mask(b, at + 23)? {
                            self.skip(
                                msg_name(ty),
                                &DecodeError::Unsupported("mask (drawn unmasked)"),
                            );
                        }
                        (src, Blit::Rop(rop_d))
                    }
                };
                let pixels = self.source(b, src.image, &src.area)?;
                // A surface source was cut to its area already.
                let area = if pixels.width as i64 == src.area.width()
                    && pixels.height as i64 == src.area.height()
                    && matches!(b.u8(src.image + 8), Ok(image::kind::SURFACE))
                {
                    Rect {
                        top: 0,
                        left: 0,
                        bottom: pixels.height as i32,
                        right: pixels.width as i32,
                    }
                } else {
                    src.area
                };
                let s = self.target(base.surface)?;
                for r in &regions {
                    s.blit(r, &bbox, &pixels, &area, mode);
                }
            }
        }
        self.touched(base.surface, &bbox, now);
        Ok(())
    }

    fn target(&mut self, id: u32) -> Result<&mut Surface, DecodeError> {
        self.surfaces
            .get_mut(&id)
            .ok_or(DecodeError::Missing("target surface"))
    }

    fn copy_bits(&mut self, b: &Body<'_>, now: Duration) -> Result<(), DecodeError> {
        let base = wire::base(b)?;
        let (x, y) = (b.i32(base.end)?, b.i32(base.end + 4)?);
        let regions = Self::regions(&base);
        let s = self.target(base.surface)?;
        if let [r] = regions.as_slice() {
            s.copy_bits(&base.bbox, x, y, r);
        } else {
            // Several clip rectangles: every one reads the surface as it was
            // before the copy, so the source is taken out once.
            let area = Rect {
                top: y,
                left: x,
                bottom: y.saturating_add(base.bbox.height() as i32),
                right: x.saturating_add(base.bbox.width() as i32),
            };
            if let Some(src) = s.extract(&area) {
                let all = Rect {
                    top: 0,
                    left: 0,
                    bottom: src.height as i32,
                    right: src.width as i32,
                };
                for r in &regions {
                    s.blit(r, &base.bbox, &src, &all, Blit::Rop(rop::OP_PUT));
                }
            }
        }
        self.touched(base.surface, &base.bbox, now);
        Ok(())
    }

    /// A video stream's clip (kept while the stream lives, so capped lower
    /// than a draw's: 64 streams x 256 rectangles = 256 KiB at most).
    fn clip_at(b: &Body<'_>, at: usize) -> Result<Option<Vec<Rect>>, DecodeError> {
        match b.u8(at)? {
            0 => Ok(None),
            1 => {
                let n = b.u32(at + 1)?;
                if n > MAX_STREAM_CLIP_RECTS {
                    return Err(DecodeError::TooLarge);
                }
                (0..n as usize)
                    .map(|i| b.rect(at + 5 + 16 * i))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            }
            _ => Err(DecodeError::Bad("clip type")),
        }
    }

    fn stream_create(&mut self, b: &Body<'_>) -> Result<(), DecodeError> {
        let surface = b.u32(0)?;
        let id = b.u32(4)?;
        let flags = b.u8(8)?;
        let codec = b.u8(9)?;
        let dest = b.rect(34)?;
        let clip = Self::clip_at(b, 50)?;
        if self.streams.len() >= self.limits.max_streams && !self.streams.contains_key(&id) {
            return Err(DecodeError::TooLarge);
        }
        self.streams.insert(
            id,
            Stream {
                surface,
                dest,
                clip,
                top_down: flags & 1 != 0,
                codec,
                tables: jpeg::Tables::default(),
            },
        );
        Ok(())
    }

    fn stream_clip(&mut self, b: &Body<'_>) -> Result<(), DecodeError> {
        let id = b.u32(0)?;
        let clip = Self::clip_at(b, 4)?;
        if let Some(s) = self.streams.get_mut(&id) {
            s.clip = clip;
        }
        Ok(())
    }

    fn stream_data(&mut self, b: &Body<'_>, sized: bool, now: Duration) -> Result<(), DecodeError> {
        let id = b.u32(0)?;
        let max = self.limits.max_surface_pixels;
        let st = self
            .streams
            .get_mut(&id)
            .ok_or(DecodeError::Missing("stream"))?;
        if st.codec != 1 {
            return Err(DecodeError::Unsupported("video codec"));
        }
        let (dest, data_at) = if sized {
            (b.rect(16)?, 32)
        } else {
            (st.dest, 8)
        };
        let n = b.u32(data_at)? as usize;
        let frame = jpeg::decode_frame(b.bytes(data_at + 4, n)?, &mut st.tables, max)?;
        let st = st.clone();
        self.stats.stream_frames += 1;
        let mut frame = frame;
        if !st.top_down {
            // MJPEG frames of a bottom-up stream arrive upside down.
            lz::flip(&mut frame.px, frame.width as usize);
        }
        let area = Rect {
            top: 0,
            left: 0,
            bottom: frame.height as i32,
            right: frame.width as i32,
        };
        let regions = match &st.clip {
            None => vec![dest],
            Some(rs) => rs.iter().map(|r| r.intersect(&dest)).collect(),
        };
        let s = self.target(st.surface)?;
        for r in &regions {
            s.blit(r, &dest, &frame, &area, Blit::Rop(rop::OP_PUT));
        }
        self.touched(st.surface, &dest, now);
        Ok(())
    }
}

/// A display message's name for counters and logs.
pub fn msg_name(t: u16) -> &'static str {
    match t {
        msg::COPY_BITS => "copy_bits",
        msg::DRAW_FILL => "fill",
        msg::DRAW_OPAQUE => "opaque",
        msg::DRAW_COPY => "copy",
        msg::DRAW_BLEND => "blend",
        msg::DRAW_BLACKNESS => "blackness",
        msg::DRAW_WHITENESS => "whiteness",
        msg::DRAW_INVERS => "invers",
        msg::DRAW_ROP3 => "rop3",
        msg::DRAW_STROKE => "stroke",
        msg::DRAW_TEXT => "text",
        msg::DRAW_TRANSPARENT => "transparent",
        msg::DRAW_ALPHA_BLEND => "alpha_blend",
        msg::DRAW_COMPOSITE => "composite",
        msg::SURFACE_CREATE => "surface_create",
        msg::SURFACE_DESTROY => "surface_destroy",
        msg::STREAM_CREATE => "stream_create",
        msg::STREAM_DATA | msg::STREAM_DATA_SIZED => "stream_data",
        msg::STREAM_CLIP => "stream_clip",
        msg::INVAL_LIST => "inval_list",
        msg::GL_SCANOUT_UNIX | msg::GL_DRAW => "gl",
        _ => "message",
    }
}

#[cfg(test)]
pub(crate) mod tests;

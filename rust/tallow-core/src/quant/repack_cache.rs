//! The repack cache: the repacked copies of a model's weights kept in a file, so that later
//! loads map them instead of repacking again.
//!
//! Repacking (`QTensor::interleaved`) writes a copy of every tiled weight into fresh memory.
//! On a VM the first touch of fresh memory is slow and erratic (faulting in 1.8 GB took 0.5 to
//! 2.9 s on our CI machines), while pages the page cache already holds map in a fraction of
//! that, which is how llama.cpp loads a GGUF. So the first load of a model writes its
//! repacked tensors into a cache file, `<dir>/<key>.repack`, and later loads of the same file
//! by the same tallow build on a CPU with the same layouts map it read-only. Small tensors too:
//! mapped from the file's huge pages they decode as fast as from the huge-page arena
//! (`arena.rs`), and the arena's fresh pages cost a load more than repacking them does
//! (SmolLM2-135M, whose layer weights are all under 2 MiB: 110-165 ms per load instead of
//! 150-285 ms with them in the arena; decode unchanged).
//!
//! File: each tensor's bytes at a page-aligned offset (`ALIGN`), then the index (the identity,
//! then one entry per tensor), then the `Trailer`, little-endian.
//!
//! Pages: the file is written through one map, and read through one, both advised for huge
//! pages, so the page cache holds it in 2 MiB folios (ext4 and XFS on recent kernels) that the
//! reading map maps with 2 MiB pages. From 4 KiB pages, a decode step that streams every weight
//! takes a TLB miss every 4 KiB (1.7B Q4_0 decode from the cache, compare.py medians: 21.0 tok/s
//! from format 1's files, written through one 4 KiB-paged map per tensor; 31.4 from 2 MiB
//! pages). Tensor boundaries need no alignment for this: a folio may hold the end of one tensor
//! and the start of the next.
//!
//! Writing a new file is a first touch of the model's size in fresh memory, which on a VM can
//! take seconds, so it happens after the load (`deferred.rs`): the load returns with the
//! tensors in their GGUF layout, each paired with its place in the file, and writer threads
//! pack them there in load order, on cores nothing else wants, while a product that needs a
//! tensor first packs what is left of it itself (or, where that costs less, reads the GGUF
//! layout, which gives the same bits).
//!
//! The file is written under a temporary name and renamed into place once whole; the writer
//! then syncs it to disk and marks it durable. A file that is not yet durable is only trusted
//! in the boot that wrote it (the page cache holds it whole; after a crash, pages may be
//! missing), so a short-lived process still leaves a usable file behind, as long as it lets
//! the writer finish ([`wait_for_repack_writes`]; the Python package does at exit). A second
//! load of the same file in the same process waits for the first one's writer, then maps the
//! file. A file that does not parse or whose identity differs is a miss. Nothing here fails a
//! load: when the cache cannot be read or written, the weights are repacked into memory as
//! without it.

use super::arena::Region;
use super::tensor::pack_all;
use super::{layout_rows, QTensor, QType};
use crate::gguf::GgufFile;
use memmap2::{MmapOptions, MmapRaw};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Last bytes of every cache file.
const MAGIC: &[u8; 8] = b"TLWRPK01";
/// Version of the file format; part of the identity. (Format 2 held only the tensors of 2 MiB
/// and more.)
const FORMAT: u32 = 3;
/// Tensor data start on page boundaries, so each could be mapped on its own.
const ALIGN: u64 = 4096;
/// The cache is kept under this many bytes (least recently used files go first) unless
/// `TALLOW_REPACK_CACHE_MAX_GB` says otherwise.
const DEFAULT_MAX_BYTES: u64 = 32 << 30;
/// Free space a new cache file must leave on its file system.
const MIN_FREE_BYTES: u64 = 1 << 30;
/// Temporary files older than this are an earlier process's unfinished writes.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What the repack cache did for one load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepackCacheStatus {
    /// The caller turned the cache off.
    Off,
    /// Large weights were mapped from an existing cache file.
    Hit,
    /// A new cache file is being written: its tensors are packed by a background thread (or by
    /// the first products that need them), then it is renamed into place and synced to disk.
    Written,
    /// Not used: nothing large to repack, or the cache directory could not be written.
    Skipped,
}

impl RepackCacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RepackCacheStatus::Off => "off",
            RepackCacheStatus::Hit => "hit",
            RepackCacheStatus::Written => "written",
            RepackCacheStatus::Skipped => "skipped",
        }
    }
}

/// What makes a cache file valid for a load: this build's layouts and the source file as it is
/// now. Any difference is a miss.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    /// Crate version, kernel set and a fingerprint of the packed layouts.
    build: String,
    /// Canonical path of the GGUF file.
    source: PathBuf,
    size: u64,
    mtime_ns: i128,
    inode: u64,
    device: u64,
    /// Where the GGUF starts in the file (`GgufFile::open_at`).
    start: u64,
}

/// One cached tensor: where its bytes are and what they must be.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    qtype: u32,
    rows: u64,
    cols: u64,
    interleave: u32,
    offset: u64,
    len: u64,
}

impl Entry {
    /// Whether this entry holds tensor `t` (row-after-row, as read from the GGUF) in the
    /// layout this CPU wants.
    fn holds(&self, t: &QTensor, g: usize) -> bool {
        self.qtype == t.qtype as u32
            && self.rows == t.rows as u64
            && self.cols == t.cols as u64
            && self.interleave as usize == g
            && self.len == t.data().len() as u64
    }
}

/// The repack cache of one load: a file to read tensors from, or one being written.
pub struct RepackCache {
    state: Mutex<State>,
}

enum State {
    Reading {
        map: Arc<MmapRaw>,
        entries: HashMap<String, Entry>,
        used: usize,
    },
    Writing(Box<Writer>),
    /// Nothing to do (a failed write, or a file that held none of the tensors asked for).
    Idle,
}

impl RepackCache {
    /// The cache in `dir` for the GGUF at `path`: an existing file when one matches, otherwise
    /// a new one to fill. `None` when the source cannot be identified or the directory cannot
    /// be used.
    pub fn open(dir: &Path, path: &Path, file: &GgufFile) -> Option<RepackCache> {
        let id = Identity::of(path, file)?;
        let key = id.key();
        let final_path = dir.join(format!("{key}.repack"));
        // Waits while another load of this process writes the same file.
        let claim = Claim::take(final_path.clone());
        let state = match read_index(&final_path, &id) {
            Some((map, entries)) => {
                touch(&final_path);
                let entries = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
                State::Reading { map, entries, used: 0 }
            }
            None => {
                std::fs::create_dir_all(dir).ok()?;
                let capacity = capacity(file);
                if capacity == 0 || !has_room(dir, capacity) {
                    return None;
                }
                State::Writing(Box::new(Writer::create(dir, &key, final_path, id, capacity, claim)?))
            }
        };
        Some(RepackCache { state: Mutex::new(state) })
    }

    /// `t` in the layout this CPU's tiles read: mapped from the cache file, or repacked into
    /// it; `None` when the cache does not take it (not tiled, or no room left).
    pub(crate) fn repacked(&self, t: &QTensor) -> Option<QTensor> {
        let g = t.repack_rows()?;
        let len = t.data().len();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            State::Reading { map, entries, used } => {
                let e = entries.get(&t.name).filter(|e| e.holds(t, g))?;
                *used += 1;
                let region = Region::in_map(map.clone(), e.offset as usize, len);
                Some(t.clone().with_layout(g, region))
            }
            State::Writing(w) => {
                // Packed straight into the file's pages (a copy into memory and then to the
                // file took twice as long: 1.7B Q8_0 first load 5.2-6.6 s against 2.0-2.4 s),
                // after the load (`deferred.rs`).
                let Some((region, offset)) = w.alloc(len) else {
                    // No room after all: drop the file; tensors packed into it stay valid,
                    // mapped from the unlinked file until the model is dropped.
                    *state = State::Idle;
                    return None;
                };
                let out = t.clone().deferred_into(g, region);
                w.jobs.push(out.clone());
                w.entries.push(Entry {
                    name: t.name.clone(),
                    qtype: t.qtype as u32,
                    rows: t.rows as u64,
                    cols: t.cols as u64,
                    interleave: g as u32,
                    offset,
                    len: len as u64,
                });
                Some(out)
            }
            State::Idle => None,
        }
    }

    /// Ends the load: hands a new file to its writer thread, and says what the cache did.
    pub fn finish(self) -> RepackCacheStatus {
        match self.state.into_inner().unwrap_or_else(|e| e.into_inner()) {
            State::Reading { used, .. } if used > 0 => RepackCacheStatus::Hit,
            State::Writing(w) if !w.entries.is_empty() => {
                let spawned = std::thread::Builder::new().name("tallow-repack-cache".into()).spawn(move || {
                    // In load order, as a forward pass reads them, yielding to the products
                    // that run meanwhile (each also packed by the first product that needs it).
                    pack_all(&w.jobs, lower_priority);
                    if let Some((file, trailer_at, dir, dst)) = w.publish() {
                        make_durable(&file, trailer_at);
                        evict(&dir, &dst, max_bytes());
                    }
                });
                // Without a writer the tensors are packed by the products that need them,
                // into the unlinked file, which is not published.
                match spawned {
                    Ok(_) => RepackCacheStatus::Written,
                    Err(_) => RepackCacheStatus::Skipped,
                }
            }
            _ => RepackCacheStatus::Skipped,
        }
    }
}

/// Waits until no load of this process is writing a repack cache file, at most `timeout`;
/// whether none is. A process that exits sooner leaves its file unfinished, and the next load
/// of the model writes it again.
pub fn wait_for_repack_writes(timeout: Option<Duration>) -> bool {
    let deadline = timeout.map(|t| Instant::now() + t);
    let (lock, changed) = &CLAIMS;
    let mut claims = lock.lock().unwrap_or_else(|e| e.into_inner());
    // A forked child inherits its parent's claims but none of its threads.
    let pid = std::process::id();
    while claims.iter().any(|c| c.1 == pid) {
        let Some(deadline) = deadline else {
            claims = changed.wait(claims).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        claims = changed.wait_timeout(claims, left).unwrap_or_else(|e| e.into_inner()).0;
    }
    true
}

/// The cache files this process is reading the index of or writing, by final path, with the
/// id of the process that claimed them.
static CLAIMS: (Mutex<Vec<(PathBuf, u32)>>, Condvar) = (Mutex::new(Vec::new()), Condvar::new());

/// This process's claim on one cache file: while it lives, no other load of the process opens
/// the file (two writers would share a temporary name).
struct Claim(PathBuf);

impl Claim {
    /// Waits until no one else holds `path`, then holds it.
    fn take(path: PathBuf) -> Claim {
        let (lock, changed) = &CLAIMS;
        let mut claims = lock.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        while claims.iter().any(|c| c.0 == path && c.1 == pid) {
            claims = changed.wait(claims).unwrap_or_else(|e| e.into_inner());
        }
        claims.push((path.clone(), pid));
        Claim(path)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let (lock, changed) = &CLAIMS;
        let mut claims = lock.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        claims.retain(|c| c.0 != self.0 || c.1 != pid);
        changed.notify_all();
    }
}

/// Makes this thread run only on cores that nothing else of the process wants (Linux's
/// `SCHED_IDLE`; elsewhere a no-op): the writer must not slow down the products that run
/// meanwhile. (At `nice 10` it still took the cores from pool workers for whole time slices, and
/// every product waits for its slowest worker: first tokens of 1.7B Q8_0 took 0.9-2.4 s.)
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread, with a zeroed parameter block (priority 0, as
    // SCHED_IDLE requires).
    unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let _ = libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
        }
    }
}

/// A cache file being written under its temporary name.
struct Writer {
    dir: PathBuf,
    tmp_path: PathBuf,
    final_path: PathBuf,
    file: File,
    /// The whole file as reserved (`capacity`), mapped for writing.
    map: Arc<MmapRaw>,
    id: Identity,
    /// End of the data written so far.
    end: u64,
    entries: Vec<Entry>,
    /// The tensors to pack, in load order.
    jobs: Vec<QTensor>,
    /// Set once the file is renamed into place, so `Drop` leaves it alone.
    published: bool,
    /// Dropped last: other loads of the file wait until the file is published or removed.
    _claim: Claim,
}

impl Writer {
    /// A temporary file of `capacity` bytes (`reserve`d), mapped for writing.
    fn create(dir: &Path, key: &str, final_path: PathBuf, id: Identity, capacity: u64, claim: Claim) -> Option<Writer> {
        remove_stale_tmp(dir);
        let tmp_path = dir.join(format!("{key}.{}.tmp", std::process::id()));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp_path).ok()?;
        // The file is this process's own temporary file: nothing truncates it under the map
        // but `publish`, past the last tensor. One map for the whole file, so that the page
        // cache can form 2 MiB folios anywhere in it (see the module comment).
        let len = usize::try_from(capacity).ok();
        let map = len.and_then(|len| {
            reserve(&file, 0, capacity)?;
            MmapOptions::new().len(len).map_raw(&file).ok()
        });
        let Some(map) = map else {
            let _ = std::fs::remove_file(&tmp_path);
            return None;
        };
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage); // optional
        let (dir, map) = (dir.to_path_buf(), Arc::new(map));
        let (entries, jobs) = (Vec::new(), Vec::new());
        Some(Writer {
            dir,
            tmp_path,
            final_path,
            file,
            map,
            id,
            end: 0,
            entries,
            jobs,
            published: false,
            _claim: claim,
        })
    }

    /// The next `len` bytes of the file, and their offset in it; `None` past the reservation.
    fn alloc(&mut self, len: usize) -> Option<(Region, u64)> {
        let offset = self.end.next_multiple_of(ALIGN);
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.map.len() as u64)?;
        self.end = end;
        Some((Region::in_map(self.map.clone(), offset as usize, len), offset))
    }

    /// Writes the index and trailer (every tensor packed) and renames the file into place.
    /// Returns the file, where its trailer is, the directory and the final path, for
    /// `make_durable` and `evict`; `None` when the file cannot be finished.
    fn publish(mut self) -> Option<(File, u64, PathBuf, PathBuf)> {
        use std::io::{Seek, SeekFrom, Write};
        let mut tail = encode_index(&self.id, &self.entries);
        let index_len = tail.len() as u64;
        let trailer = Trailer { index_at: self.end, index_len, boot: boot_id(), durable: false };
        tail.extend_from_slice(&trailer.encode());
        // The index goes right after the last tensor; the rest of the reservation (tensors that
        // were not tiled after all) is cut off, under no region.
        let written = self.file.seek(SeekFrom::Start(self.end)).and_then(|_| self.file.write_all(&tail));
        let written = written.and_then(|_| self.file.set_len(self.end + tail.len() as u64));
        // Every byte is in the page cache now (the maps write to it), so other processes read
        // the file whole from the moment it is renamed; `Trailer::usable` covers a crash before
        // it reaches the disk.
        if written.is_err() || std::fs::rename(&self.tmp_path, &self.final_path).is_err() {
            return None;
        }
        self.published = true;
        let file = self.file.try_clone().ok()?; // without it, the next reader syncs the file
        Some((file, self.end + index_len, self.dir.clone(), self.final_path.clone()))
    }
}

/// The fixed-size end of a cache file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Trailer {
    index_at: u64,
    index_len: u64,
    /// The boot the file was written in (`boot_id`).
    boot: u128,
    /// Set once the whole file was synced to disk.
    durable: bool,
}

impl Trailer {
    const LEN: usize = 48;
    /// Where `durable` lies in the trailer.
    const DURABLE_AT: u64 = 32;

    fn encode(&self) -> [u8; Trailer::LEN] {
        let mut out = [0u8; Trailer::LEN];
        out[..8].copy_from_slice(&self.index_at.to_le_bytes());
        out[8..16].copy_from_slice(&self.index_len.to_le_bytes());
        out[16..32].copy_from_slice(&self.boot.to_le_bytes());
        out[32..40].copy_from_slice(&(self.durable as u64).to_le_bytes());
        out[40..].copy_from_slice(MAGIC);
        out
    }

    fn decode(b: &[u8; Trailer::LEN]) -> Option<Trailer> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let durable = match u64_at(32) {
            0 => false,
            1 => true,
            _ => return None,
        };
        let boot = u128::from_le_bytes(b[16..32].try_into().expect("16 bytes"));
        (&b[40..] == MAGIC).then_some(Trailer { index_at: u64_at(0), index_len: u64_at(8), boot, durable })
    }

    /// Whether the file's data can be trusted: synced to disk, or written in this boot (a file
    /// renamed into place before a crash may have lost pages that were never written back).
    fn usable(&self) -> bool {
        self.durable || (self.boot != 0 && self.boot == boot_id())
    }
}

/// Syncs a published cache file and then marks it durable; a file whose writer exited first
/// is marked by the next process that maps it.
fn make_durable(file: &File, trailer_at: u64) {
    use std::io::{Seek, SeekFrom, Write};
    if file.sync_all().is_err() {
        return;
    }
    let mut f = file;
    let flag = 1u64.to_le_bytes();
    if f.seek(SeekFrom::Start(trailer_at + Trailer::DURABLE_AT)).and_then(|_| f.write_all(&flag)).is_ok() {
        let _ = file.sync_data();
    }
}

/// This boot's identity (Linux: `/proc/sys/kernel/random/boot_id`), 0 where there is none.
fn boot_id() -> u128 {
    static ID: OnceLock<u128> = OnceLock::new();
    *ID.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let hex: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        u128::from_str_radix(&hex, 16).unwrap_or(0)
    })
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

impl Identity {
    fn of(path: &Path, file: &GgufFile) -> Option<Identity> {
        let source = std::fs::canonicalize(path).ok()?;
        source.to_str()?; // the index stores paths as UTF-8
        Identity::stat(source, build_identity().to_string(), file.start())
    }

    /// The identity of `source` as it is now.
    fn stat(source: PathBuf, build: String, start: u64) -> Option<Identity> {
        let m = std::fs::metadata(&source).ok()?;
        #[cfg(unix)]
        let (mtime_ns, inode, device) = {
            use std::os::unix::fs::MetadataExt;
            (m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128, m.ino(), m.dev())
        };
        #[cfg(not(unix))]
        let (mtime_ns, inode, device) = {
            let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
            (t.as_nanos() as i128, 0, 0)
        };
        Some(Identity { build, source, size: m.len(), mtime_ns, inode, device, start })
    }

    /// The cache file's name: a hash of the identity (the identity itself is checked in full).
    fn key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut bytes = Vec::new();
        encode_identity(self, &mut bytes);
        let mut h = std::hash::DefaultHasher::new();
        bytes.hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Whether the source file is still what this identity describes.
    fn source_unchanged(&self) -> bool {
        Identity::stat(self.source.clone(), self.build.clone(), self.start).as_ref() == Some(self)
    }
}

/// Crate version, kernel set and a hash of how each tiled type is packed on this CPU: a change
/// to a layout (`x16.rs`) changes the fingerprint, so old files are never read with it.
fn build_identity() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        for q in QType::ALL {
            let g = layout_rows(q);
            if g == 1 {
                continue;
            }
            let cols = 2 * q.block_size();
            let n = g * q.row_bytes(cols as u64).unwrap_or(0) as usize;
            let bytes: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(131) ^ (i >> 7)) as u8).collect();
            let Ok(t) = QTensor::from_bytes("fingerprint", q, g, cols, &bytes) else { continue };
            (q as u32, g, t.interleaved().data()).hash(&mut h);
        }
        let kernels = super::kernels().name();
        format!("tallow {} format {FORMAT} kernels {kernels} layout {:016x}", env!("CARGO_PKG_VERSION"), h.finish())
    })
}

fn encode_identity(id: &Identity, out: &mut Vec<u8>) {
    put_bytes(out, id.build.as_bytes());
    put_bytes(out, id.source.to_str().unwrap_or("").as_bytes());
    for v in [id.size, id.inode, id.device, id.start] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&id.mtime_ns.to_le_bytes());
}

fn encode_index(id: &Identity, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_identity(id, &mut out);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        put_bytes(&mut out, e.name.as_bytes());
        out.extend_from_slice(&e.qtype.to_le_bytes());
        out.extend_from_slice(&e.interleave.to_le_bytes());
        for v in [e.rows, e.cols, e.offset, e.len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads little-endian fields from the index; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn decode_index(index: &[u8], data_end: u64) -> Option<(Identity, Vec<Entry>)> {
    let mut r = Reader(index);
    let build = String::from_utf8(r.bytes()?.to_vec()).ok()?;
    let source = PathBuf::from(std::str::from_utf8(r.bytes()?).ok()?);
    let (size, inode, device, start) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let mtime_ns = i128::from_le_bytes(r.take(16)?.try_into().ok()?);
    let id = Identity { build, source, size, mtime_ns, inode, device, start };
    let n = r.u32()?;
    let mut entries = Vec::with_capacity((n as usize).min(index.len() / 40));
    for _ in 0..n {
        let name = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let (qtype, interleave) = (r.u32()?, r.u32()?);
        let (rows, cols, offset, len) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        if !offset.is_multiple_of(ALIGN) || offset.checked_add(len)? > data_end {
            return None;
        }
        entries.push(Entry { name, qtype, rows, cols, interleave, offset, len });
    }
    r.0.is_empty().then_some((id, entries))
}

/// The cache file at `path` mapped read-only, and its entries; `None` when there is no such
/// file, it does not parse, it was made for another identity than `want`, or it cannot be
/// trusted (`Trailer::usable`).
fn read_index(path: &Path, want: &Identity) -> Option<(Arc<MmapRaw>, Vec<Entry>)> {
    let file = File::open(path).ok()?;
    let (trailer, id, entries) = read_footer(&file)?;
    if id != *want || !trailer.usable() {
        return None;
    }
    if !trailer.durable {
        // Its writer exited before syncing it: finish that in the background.
        if let Ok(w) = OpenOptions::new().write(true).open(path) {
            let at = trailer.index_at + trailer.index_len;
            let _ = std::thread::Builder::new().name("tallow-repack-cache".into()).spawn(move || make_durable(&w, at));
        }
    }
    // Cache files are only ever created whole and renamed into place; afterwards only the
    // trailer's `durable` flag is written. They are removed by unlinking, which leaves maps
    // intact.
    let map = MmapOptions::new().map_raw_read_only(&file).ok()?;
    if map.len() as u64 != file.metadata().ok()?.len() {
        return None;
    }
    // Populated now, like llama.cpp's map of a GGUF, rather than faulted in by the first
    // forward pass; after the advice, not by `MmapOptions::populate` before it, so that pages
    // read back from disk (after the page cache dropped them) come in 2 MiB folios too.
    #[cfg(target_os = "linux")]
    {
        let _ = map.advise(memmap2::Advice::HugePage);
        if map.advise(memmap2::Advice::PopulateRead).is_err() {
            let _ = map.advise(memmap2::Advice::WillNeed); // before Linux 5.14
        }
    }
    Some((Arc::new(map), entries))
}

/// The trailer, identity and entries at the end of an open cache file.
fn read_footer(mut file: &File) -> Option<(Trailer, Identity, Vec<Entry>)> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata().ok()?.len();
    let mut tail = [0u8; Trailer::LEN];
    file.seek(SeekFrom::Start(len.checked_sub(Trailer::LEN as u64)?)).ok()?;
    file.read_exact(&mut tail).ok()?;
    let t = Trailer::decode(&tail)?;
    if t.index_at.checked_add(t.index_len)? != len - Trailer::LEN as u64 || t.index_len > 64 << 20 {
        return None;
    }
    let mut index = vec![0u8; t.index_len as usize];
    file.seek(SeekFrom::Start(t.index_at)).ok()?;
    file.read_exact(&mut index).ok()?;
    let (id, entries) = decode_index(&index, t.index_at)?;
    Some((t, id, entries))
}

/// Grows the file to `offset + len` once the file system has shown it can hold those bytes:
/// `fallocate` fails cleanly on a full disk or quota, where a write through a map of a sparse
/// file would fault (SIGBUS). The blocks are then punched back out, so the writes go through
/// delayed allocation: on ext4, writing through a map into fallocated (unwritten) extents takes
/// a journal handle per page and stalls behind every commit (1.7B first loads of 5-24 s, against
/// 1-2.5 s sparse, in back-to-back runs). Only space taken by others in the second or two of a
/// load could still make a write fault.
#[cfg(target_os = "linux")]
fn reserve(file: &File, offset: u64, len: u64) -> Option<()> {
    use std::os::fd::AsRawFd;
    let (fd, off, n) = (file.as_raw_fd(), i64::try_from(offset).ok()?, i64::try_from(len).ok()?);
    // SAFETY: plain system calls on an open descriptor.
    unsafe {
        if libc::fallocate(fd, 0, off, n) != 0 {
            return None;
        }
        // Failure leaves the blocks allocated: slower to write, still correct.
        let _ = libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, n);
    }
    Some(())
}

/// Without `fallocate`, a full disk would make a write through the map fault, so there is no
/// cache.
#[cfg(not(target_os = "linux"))]
fn reserve(_file: &File, _offset: u64, _len: u64) -> Option<()> {
    None
}

/// Bytes of a cache file for `file` at most: every tensor the cache could take, page-aligned.
fn capacity(file: &GgufFile) -> u64 {
    file.tensors().iter().map(|t| t.n_bytes.next_multiple_of(ALIGN)).sum()
}

/// Whether the file system of `dir` (which exists) has room for `want` bytes and some to spare.
fn has_room(dir: &Path, want: u64) -> bool {
    free_bytes(dir).is_some_and(|free| free >= want.saturating_add(MIN_FREE_BYTES))
}

#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid C string and `s` a plain struct the call fills.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

fn max_bytes() -> u64 {
    std::env::var("TALLOW_REPACK_CACHE_MAX_GB")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map_or(DEFAULT_MAX_BYTES, |gb| (gb * (1u64 << 30) as f64) as u64)
}

/// Marks a cache file as just used (eviction removes the least recently used first).
fn touch(path: &Path) {
    if let Ok(f) = OpenOptions::new().write(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes cache files whose source file is gone or changed, then the least recently used
/// ones until the directory holds at most `max` bytes; `keep` (just written) stays.
fn evict(dir: &Path, keep: &Path, max: u64) {
    let Ok(list) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
    for entry in list.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "repack") {
            continue;
        }
        let Ok(m) = entry.metadata() else { continue };
        let footer = File::open(&path).ok().and_then(|f| read_footer(&f));
        let stale = footer.is_none_or(|(t, id, _)| !t.usable() || !id.source_unchanged());
        if stale && path != keep {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        files.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len(), path));
    }
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    for (_, len, path) in files {
        if total <= max {
            break;
        }
        if path != keep && std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// Removes temporary files that earlier processes left unfinished.
fn remove_stale_tmp(dir: &Path) {
    let Ok(list) = std::fs::read_dir(dir) else { return };
    for entry in list.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "tmp") {
            continue;
        }
        let pid = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.rsplit('.').next()?.parse::<i32>().ok());
        let dead = pid.is_some_and(process_gone);
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|a| a > STALE_TMP);
        if dead || old {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(unix)]
fn process_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    let failed = unsafe { libc::kill(pid, 0) } != 0;
    failed && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_gone(_pid: i32) -> bool {
    false
}

//! The repack cache (quant/repack_cache.rs) on the real models: a first load writes the large
//! repacked tensors to a cache file, a second maps them from it, and every load computes the
//! same logits, bit for bit, as a load without the cache. A changed source file, a damaged cache
//! file or a cache file for another file is a miss, never an error or a crash.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tallow_core::gguf::GgufFile;
use tallow_core::model::{load_model, load_model_with, Model};
use tallow_core::quant::{tiles_for, QType, RepackCache, RepackCacheStatus};
use tallow_core::threadpool::ThreadPool;

fn model_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/.models").join(file)
}

/// A fresh, empty directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tallow-repack-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The model at `path`, loaded with the cache in `dir`, and what the cache did.
fn load_cached(path: &Path, dir: &Path) -> (Arc<dyn Model>, RepackCacheStatus) {
    let file = Arc::new(GgufFile::open(path).unwrap());
    let cache = RepackCache::open(dir, path, &file).expect("cache directory usable");
    let model = load_model_with(file, Some(&cache)).unwrap();
    (model, cache.finish())
}

/// Logits of every position of a short prompt.
fn logits(model: &dyn Model) -> Vec<f32> {
    let pool = ThreadPool::new(2);
    let mut cache = model.new_cache(64).unwrap();
    let mut scratch = model.new_scratch(16).unwrap();
    let tokens = [1u32, 450, 7483, 310, 3444, 338, 3681, 29889];
    let mut all = model.forward(&tokens, &mut cache, &mut scratch, &pool, true).unwrap().to_vec();
    // and one decode step, which takes the GEMV paths
    all.extend_from_slice(model.forward(&[263], &mut cache, &mut scratch, &pool, false).unwrap());
    all
}

/// The published cache files of `dir`, once the background writer has renamed one into place.
fn wait_published(dir: &Path, n: usize) -> Vec<PathBuf> {
    let t0 = Instant::now();
    loop {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "repack"))
            .collect();
        let pending =
            std::fs::read_dir(dir).unwrap().flatten().any(|e| e.path().extension().is_some_and(|e| e == "tmp"));
        if files.len() >= n && !pending {
            files.sort();
            return files;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no cache file published in {dir:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this CPU repacks anything (not under TALLOW_KERNELS=scalar).
fn repacks() -> bool {
    tiles_for(QType::Q8_0)
}

#[test]
fn second_load_maps_the_cache_and_computes_the_same_logits() {
    for file in ["smollm2-135m-q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"] {
        let path = model_path(file);
        let dir = TempDir::new("hit");
        let plain = logits(&*load_model(Arc::new(GgufFile::open(&path).unwrap())).unwrap());

        let (first, status) = load_cached(&path, &dir.0);
        if !repacks() {
            assert_eq!(status, RepackCacheStatus::Skipped, "{file}: nothing is repacked");
            assert_eq!(logits(&*first), plain);
            continue;
        }
        assert_eq!(status, RepackCacheStatus::Written, "{file}");
        assert_eq!(logits(&*first).iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bits(&plain), "{file}: written");
        let files = wait_published(&dir.0, 1);
        assert_eq!(files.len(), 1);
        // The token embedding (Q8_0, over 2 MiB) is cached in both models.
        assert!(std::fs::metadata(&files[0]).unwrap().len() > 2 << 20);

        let (second, status) = load_cached(&path, &dir.0);
        assert_eq!(status, RepackCacheStatus::Hit, "{file}");
        assert_eq!(bits(&logits(&*second)), bits(&plain), "{file}: mapped from the cache");
        drop((first, second));
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The bits of `logits` of the model at `path` loaded without the cache.
fn plain_bits(path: &Path) -> Vec<u32> {
    bits(&logits(&*load_model(Arc::new(GgufFile::open(path).unwrap())).unwrap()))
}

#[test]
fn a_changed_source_or_a_damaged_cache_file_is_a_miss() {
    if !repacks() {
        return;
    }
    let dir = TempDir::new("miss");
    let src = TempDir::new("src");
    let path = src.0.join("model.gguf");
    std::fs::copy(model_path("smollm2-135m-q4_1.gguf"), &path).unwrap();
    let plain = plain_bits(&path);

    assert_eq!(load_cached(&path, &dir.0).1, RepackCacheStatus::Written);
    let old = wait_published(&dir.0, 1).remove(0);

    // The source changes (same bytes, new modification time): a new cache file, and the one
    // for the old version is evicted once the new one is published.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5)).unwrap();
    drop(f);
    let (model, status) = load_cached(&path, &dir.0);
    assert_eq!(status, RepackCacheStatus::Written);
    assert_eq!(bits(&logits(&*model)), plain);
    let t0 = Instant::now();
    while old.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "stale cache file {old:?} kept");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(model);
    let current = wait_published(&dir.0, 1).remove(0);
    assert_eq!(load_cached(&path, &dir.0).1, RepackCacheStatus::Hit);

    // Damaged files: a flipped magic, a footer pointing past the end, a truncated file. Each
    // is a miss; the load repacks into a new file and computes the same logits.
    let good = std::fs::read(&current).unwrap();
    let n = good.len();
    let mut bad_magic = good.clone();
    bad_magic[n - 1] ^= 1;
    let mut bad_offset = good.clone();
    bad_offset[n - 48..n - 40].copy_from_slice(&(n as u64 * 2).to_le_bytes());
    let truncated = good[..n / 2].to_vec();
    let mut bad_index = good.clone();
    let index_at = u64::from_le_bytes(good[n - 48..n - 40].try_into().unwrap()) as usize;
    bad_index[index_at + 2] ^= 0x55; // inside the identity's length
                                     // Renamed into place before it was synced, in another boot: pages may be missing.
    let mut unsynced_elsewhere = good.clone();
    unsynced_elsewhere[n - 16..n - 8].copy_from_slice(&0u64.to_le_bytes());
    unsynced_elsewhere[n - 32..n - 16].copy_from_slice(&0x1234u128.to_le_bytes());
    let damaged = [
        ("magic", bad_magic),
        ("offset", bad_offset),
        ("truncated", truncated),
        ("index", bad_index),
        ("unsynced in another boot", unsynced_elsewhere),
    ];
    // A new file in place of the cache file, as the cache itself replaces files: the threads
    // that mark a file durable after syncing it (the writer's, a reader's) write through their
    // own handles, to the file they opened.
    let replace = |bytes: &[u8]| {
        let tmp = current.with_extension("replacement");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &current).unwrap();
    };
    let durable = |what: &str| {
        let t0 = Instant::now();
        while std::fs::read(&current).unwrap()[n - 16] != 1 {
            assert!(t0.elapsed() < Duration::from_secs(120), "{what}: never marked durable");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for (what, bytes) in damaged {
        replace(&bytes);
        let (model, status) = load_cached(&path, &dir.0);
        assert_eq!(status, RepackCacheStatus::Written, "{what}");
        assert_eq!(bits(&logits(&*model)), plain, "{what}");
        wait_published(&dir.0, 1);
        assert_eq!(load_cached(&path, &dir.0).1, RepackCacheStatus::Hit, "{what}: rewritten");
    }

    // Not synced yet, but written in this boot (its writer exited before the background sync):
    // the page cache holds it whole, so it is used, and the reader marks it durable.
    durable("published file"); // by the writer's background sync
    let mut unsynced_here = std::fs::read(&current).unwrap();
    unsynced_here[n - 16] = 0;
    replace(&unsynced_here);
    assert_eq!(load_cached(&path, &dir.0).1, RepackCacheStatus::Hit);
    durable("file read before it was synced"); // by the reader's
}

#[test]
fn an_unwritable_cache_directory_loads_without_the_cache() {
    let src = TempDir::new("ro");
    let not_a_dir = src.0.join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let path = model_path("smollm2-135m-q4_1.gguf");
    let file = Arc::new(GgufFile::open(&path).unwrap());
    // A regular file where the directory should be: no cache, and the load goes on without it.
    let cache = RepackCache::open(&not_a_dir.join("repack"), &path, &file);
    assert!(cache.is_none());
    let model = load_model_with(file, cache.as_ref()).unwrap();
    assert_eq!(logits(&*model).len(), 8 * model.config().n_vocab + model.config().n_vocab);
}

#[test]
fn a_model_dropped_before_its_writer_ends_still_leaves_the_file() {
    if !repacks() {
        return;
    }
    let path = model_path("smollm2-135m-q4_1.gguf");
    let dir = TempDir::new("dropped");
    let plain = plain_bits(&path);
    let (first, status) = load_cached(&path, &dir.0);
    assert_eq!(status, RepackCacheStatus::Written);
    // Dropped before any product: the writer alone packs every tensor. A second load in this
    // process waits for the first one's writer, then maps the file.
    drop(first);
    let (second, status) = load_cached(&path, &dir.0);
    assert_eq!(status, RepackCacheStatus::Hit);
    assert_eq!(bits(&logits(&*second)), plain);
    assert!(tallow_core::quant::wait_for_repack_writes(Some(Duration::from_secs(60))));
    assert_eq!(wait_published(&dir.0, 1).len(), 1);
}

#[test]
fn threads_loading_one_file_at_once_share_one_cache_file() {
    if !repacks() {
        return;
    }
    let path = model_path("gemma-3-270m-q4_k_m.gguf");
    let dir = TempDir::new("threads");
    let plain = plain_bits(&path);
    let statuses: Vec<RepackCacheStatus> = std::thread::scope(|s| {
        let loads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let (model, status) = load_cached(&path, &dir.0);
                    // Products on a model whose weights the writer may still be packing.
                    assert_eq!(bits(&logits(&*model)), plain);
                    status
                })
            })
            .collect();
        loads.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let written = statuses.iter().filter(|s| **s == RepackCacheStatus::Written).count();
    assert_eq!(written, 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| matches!(s, RepackCacheStatus::Written | RepackCacheStatus::Hit)), "{statuses:?}");
    assert!(tallow_core::quant::wait_for_repack_writes(Some(Duration::from_secs(60))));
    assert_eq!(wait_published(&dir.0, 1).len(), 1);
}

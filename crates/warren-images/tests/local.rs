//! OCI layouts and `docker save` archives built in the test, unpacked into ext4 images and
//! inspected with debugfs.

mod common;

use std::path::Path;

use common::*;
use warren_images::{ImageError, ImageStore, ImageStoreConfig, NoProgress};

fn store(cache: &Path) -> ImageStore {
    ImageStore::new(ImageStoreConfig::new(cache)).expect("open store")
}

/// Assert everything the standard image promises about its root file system.
fn check_standard_rootfs(rootfs: &Path) {
    // Whiteout: deleted.txt from layer 1 is gone, the rest of etc/ is there.
    assert_eq!(names(rootfs, "/etc"), vec!["hello.txt", "new.txt"]);
    assert_eq!(cat(rootfs, "/etc/hello.txt"), "hello\n");
    // Opaque directory: only layer 2's entries remain.
    assert_eq!(names(rootfs, "/opaque"), vec!["upper.txt"]);
    assert_eq!(cat(rootfs, "/opaque/upper.txt"), "upper\n");
    // Ownership and permissions.
    let hello = entry(rootfs, "/etc", "hello.txt");
    assert_eq!((hello.uid, hello.gid), (1000, 1001));
    assert_eq!(hello.mode & 0o7777, 0o640);
    let stat = debugfs(rootfs, "stat /etc/hello.txt");
    assert!(
        stat.contains("mtime: 0x499602d2"),
        "mtime not preserved: {stat}"
    );
    let suid = entry(rootfs, "/bin", "suid");
    assert_eq!(suid.mode & 0o7777, 0o4755, "setuid bit lost");
    // Hard link: same inode, two links.
    let tool = entry(rootfs, "/bin", "tool");
    let hard = entry(rootfs, "/bin", "tool-hardlink");
    assert_eq!(tool.inode, hard.inode, "hard link is not the same inode");
    assert!(debugfs(rootfs, "stat /bin/tool").contains("Links: 2"));
    assert_eq!(tool.mode & 0o7777, 0o755);
    // Symlink.
    let sym = entry(rootfs, "/bin", "tool-symlink");
    assert_eq!(sym.mode & 0o170000, 0o120000, "not a symlink");
    let s = debugfs(rootfs, "stat /bin/tool-symlink");
    assert!(s.contains("Fast link dest: \"tool\""), "{s}");
    // PAX xattrs (how file capabilities travel) are kept.
    let ea = debugfs(rootfs, "ea_list /bin/captool");
    assert!(
        ea.contains("user.warren") && ea.contains("kept"),
        "xattr lost: {ea}"
    );
    // The zstd layer.
    assert_eq!(cat(rootfs, "/usr/share/zstd.txt"), "from a zstd layer\n");
    // No journal, labelled.
    let sb = debugfs(rootfs, "stats");
    assert!(sb.contains("Filesystem volume name:   warren-root"), "{sb}");
    assert!(!sb.contains("has_journal"), "image has a journal");
}

#[tokio::test]
async fn oci_layout_whiteouts_links_and_config() {
    let t = tempfile::tempdir().expect("tmp");
    let img = standard_image();
    let layout = t.path().join("layout");
    write_layout(&layout, &img, "v1");
    let cache = t.path().join("cache");
    let s = store(&cache);
    let rec = Recorder::default();

    let image = s
        .resolve(&format!("oci:{}:v1", layout.display()), &rec)
        .await
        .expect("resolve layout");
    assert_eq!(image.digest, img.config_digest);
    assert_eq!(
        image.rootfs,
        cache
            .join("images")
            .join(format!("sha256-{}", hex_of(&img.config_digest)))
            .join("rootfs.ext4")
    );
    let meta = std::fs::metadata(&image.rootfs).expect("rootfs");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o444,
        "rootfs must be read-only"
    );
    assert_eq!(meta.len(), image.size_bytes);
    check_standard_rootfs(&image.rootfs);

    // Config comes through.
    let c = &image.config;
    assert_eq!(
        c.env,
        vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("FOO".to_string(), "bar=baz".to_string())
        ]
    );
    assert_eq!(
        c.entrypoint.as_deref(),
        Some(&["/bin/tool".to_string()][..])
    );
    assert_eq!(c.cmd.as_deref(), Some(&["--serve".to_string()][..]));
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.user.as_deref(), Some("1000:1001"));
    assert_eq!(
        c.command(None),
        Some(vec!["/bin/tool".to_string(), "--serve".to_string()])
    );

    // Progress: unpack phases per layer, bytes, one mkfs.
    assert_eq!(rec.mkfs_runs(), 1);
    let phases = rec.phases.lock().expect("lock").clone();
    assert_eq!(
        phases
            .iter()
            .filter(|p| p.starts_with("unpacking layer"))
            .count(),
        3
    );

    // Staging removed, nothing in tmp/.
    assert!(std::fs::read_dir(cache.join("tmp"))
        .expect("tmp")
        .next()
        .is_none());

    // A second resolve (plain path, no tag: the layout has one image) is a cache hit.
    let rec2 = Recorder::default();
    let again = s
        .resolve(layout.to_str().expect("utf8"), &rec2)
        .await
        .expect("again");
    assert_eq!(again.digest, image.digest);
    assert_eq!(rec2.mkfs_runs(), 0);

    // By digest, list, remove.
    let by_digest = s
        .resolve(&image.digest, &NoProgress)
        .await
        .expect("by digest");
    assert_eq!(by_digest.rootfs, image.rootfs);
    let listed = s.list().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, image.digest);
    s.remove(&image.digest).expect("remove");
    assert!(s.list().expect("list").is_empty());
    assert!(!image.rootfs.exists());
    assert!(matches!(
        s.resolve(&image.digest, &NoProgress).await,
        Err(ImageError::NotFound { .. })
    ));
}

#[tokio::test]
async fn docker_save_archive_builds_the_same_image() {
    let t = tempfile::tempdir().expect("tmp");
    let img = standard_image();
    let tarball = t.path().join("img.tar");
    write_docker_archive(&tarball, &img, "test/img:v1");
    let s = store(&t.path().join("cache"));
    let image = s
        .resolve(tarball.to_str().expect("utf8"), &NoProgress)
        .await
        .expect("resolve archive");
    // Same config digest as the OCI layout of the same image.
    assert_eq!(image.digest, img.config_digest);
    check_standard_rootfs(&image.rootfs);
    assert_eq!(image.config.user.as_deref(), Some("1000:1001"));

    // The explicit prefix with a tag, and a tag that is not there.
    let tagged = s
        .resolve(
            &format!("docker-archive:{}:v1", tarball.display()),
            &NoProgress,
        )
        .await
        .expect("tagged");
    assert_eq!(tagged.digest, image.digest);
    let missing = s
        .resolve(
            &format!("docker-archive:{}:nope", tarball.display()),
            &NoProgress,
        )
        .await;
    assert!(
        matches!(missing, Err(ImageError::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn oci_archive_tarball_is_read_through_its_index() {
    let t = tempfile::tempdir().expect("tmp");
    let img = standard_image();
    let layout = t.path().join("layout");
    write_layout(&layout, &img, "v1");
    let tarball = t.path().join("oci.tar");
    tar_dir(&layout, &tarball);
    let s = store(&t.path().join("cache"));
    let image = s
        .resolve(
            &format!("docker-archive:{}:v1", tarball.display()),
            &NoProgress,
        )
        .await
        .expect("oci archive");
    assert_eq!(image.digest, img.config_digest);
    check_standard_rootfs(&image.rootfs);
}

#[tokio::test]
async fn corrupt_layer_is_rejected_and_nothing_is_cached() {
    let t = tempfile::tempdir().expect("tmp");
    let img = standard_image();
    let layout = t.path().join("layout");
    write_layout(&layout, &img, "v1");
    // Flip a byte in the middle of the gzip layer's stored blob.
    let gz_digest = sha(&img.layers[1].stored);
    let blob = layout.join("blobs/sha256").join(hex_of(&gz_digest));
    let mut bytes = std::fs::read(&blob).expect("blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&blob, &bytes).expect("write");

    let cache = t.path().join("cache");
    let s = store(&cache);
    let err = s
        .resolve(layout.to_str().expect("utf8"), &NoProgress)
        .await
        .expect_err("corrupt layer must fail");
    match &err {
        ImageError::Corrupt { what, .. } => assert!(what.contains(&gz_digest), "{err}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(
        cache_leftovers(&cache).is_empty(),
        "{:?}",
        cache_leftovers(&cache)
    );

    // Same for a flipped byte in the uncompressed layer (content, not header).
    let t2 = tempfile::tempdir().expect("tmp");
    let layout2 = t2.path().join("layout");
    write_layout(&layout2, &img, "v1");
    let plain_digest = sha(&img.layers[0].stored);
    let blob = layout2.join("blobs/sha256").join(hex_of(&plain_digest));
    let mut bytes = std::fs::read(&blob).expect("blob");
    let pos = bytes
        .windows(6)
        .position(|w| w == b"hello\n")
        .expect("content");
    bytes[pos] = b'j';
    std::fs::write(&blob, &bytes).expect("write");
    let cache2 = t2.path().join("cache");
    let err = store(&cache2)
        .resolve(layout2.to_str().expect("utf8"), &NoProgress)
        .await
        .expect_err("corrupt");
    assert!(
        matches!(&err, ImageError::Corrupt { what, .. } if what.contains(&plain_digest)),
        "{err:?}"
    );
    assert!(cache_leftovers(&cache2).is_empty());
}

#[tokio::test]
async fn truncated_archive_is_rejected_and_nothing_is_cached() {
    let t = tempfile::tempdir().expect("tmp");
    let img = standard_image();
    let tarball = t.path().join("img.tar");
    write_docker_archive(&tarball, &img, "test/img:v1");
    let full = std::fs::read(&tarball).expect("read");
    let cache = t.path().join("cache");
    let s = store(&cache);
    // Cut in the middle of a layer, and at a point that drops manifest.json.
    for cut in [full.len() / 2 + 100, full.len() - 3000] {
        std::fs::write(&tarball, &full[..cut]).expect("truncate");
        let err = s
            .resolve(tarball.to_str().expect("utf8"), &NoProgress)
            .await
            .expect_err("truncated must fail");
        match &err {
            ImageError::Corrupt { what, .. } => assert!(what.contains("img.tar"), "{err}"),
            other => panic!("expected Corrupt at cut {cut}, got {other:?}"),
        }
        assert!(cache_leftovers(&cache).is_empty());
    }
}

#[tokio::test]
async fn entries_escaping_the_root_are_contained_or_rejected() {
    let t = tempfile::tempdir().expect("tmp");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let outside_str: &'static str = Box::leak(outside.display().to_string().into_boxed_str());

    // A symlink pointing outside, then a file written "through" it: must land inside.
    let l1 = tar_layer(&[E::Symlink("escape", outside_str)]);
    let l2 = tar_layer(&[E::File("escape/pwned", "gotcha\n", 0o644)]);
    let img = make_image(vec![plain(l1), gzipped(l2)], serde_json::json!({}), "amd64");
    let layout = t.path().join("layout");
    write_layout(&layout, &img, "latest");
    let s = store(&t.path().join("cache"));
    let image = s
        .resolve(layout.to_str().expect("utf8"), &NoProgress)
        .await
        .expect("contained");
    assert!(
        !outside.join("pwned").exists(),
        "a layer wrote outside the root"
    );
    assert_eq!(
        cat(&image.rootfs, &format!("{outside_str}/pwned")),
        "gotcha\n"
    );

    // `..` in an entry name is refused.
    let bad = tar_layer(&[E::RawName("../evil", "x")]);
    let img = make_image(vec![plain(bad)], serde_json::json!({}), "amd64");
    let layout = t.path().join("layout-dotdot");
    write_layout(&layout, &img, "latest");
    let err = s
        .resolve(layout.to_str().expect("utf8"), &NoProgress)
        .await
        .expect_err("dotdot");
    assert!(
        matches!(&err, ImageError::Corrupt { reason, .. } if reason.contains("..")),
        "{err:?}"
    );
    assert!(!t.path().join("evil").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolves_build_once() {
    let t = tempfile::tempdir().expect("tmp");
    let img = standard_image();
    let layout = t.path().join("layout");
    write_layout(&layout, &img, "v1");
    let cache = t.path().join("cache");
    // Two stores on one cache stand in for two processes; plus two tasks on one store.
    let a = store(&cache);
    let b = store(&cache);
    let (ra, rb, rc) = (
        Recorder::default(),
        Recorder::default(),
        Recorder::default(),
    );
    let reference = layout.to_str().expect("utf8");
    let (x, y, z) = tokio::join!(
        a.resolve(reference, &ra),
        b.resolve(reference, &rb),
        a.resolve(reference, &rc)
    );
    let (x, y, z) = (x.expect("a"), y.expect("b"), z.expect("c"));
    assert_eq!(x.digest, y.digest);
    assert_eq!(y.digest, z.digest);
    assert_eq!(x.rootfs, z.rootfs);
    assert_eq!(
        ra.mkfs_runs() + rb.mkfs_runs() + rc.mkfs_runs(),
        1,
        "built more than once"
    );
    assert_eq!(a.list().expect("list").len(), 1);
}

#[tokio::test]
async fn unknown_names_list_the_catalog() {
    let t = tempfile::tempdir().expect("tmp");
    let s = store(&t.path().join("cache"));
    let err = s
        .resolve("Not A Valid Name!", &NoProgress)
        .await
        .expect_err("unknown");
    match &err {
        ImageError::UnknownImage { catalog, .. } => {
            for n in [
                "busybox",
                "debian-12",
                "python-3.11",
                "node-18",
                "postgres-15",
            ] {
                assert!(catalog.contains(n), "{catalog}");
            }
        }
        other => panic!("expected UnknownImage, got {other:?}"),
    }
    assert!(err.to_string().contains("debian-12"));
    let names: Vec<&str> = s.catalog().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "busybox",
            "debian-12",
            "python-3.11",
            "node-18",
            "postgres-15"
        ]
    );
    assert!(matches!(
        s.resolve("/nonexistent/path/img.tar", &NoProgress).await,
        Err(ImageError::NotFound { .. })
    ));
}

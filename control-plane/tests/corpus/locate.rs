// Where the App Mesh examples corpus is; included by the tests that read it (this crate's
// corpus test, the agent's walkthrough test), which sit at the same depth.

/// The corpus: `$APPMESH_CORPUS`, else `shared/appmesh/corpus` beside the repository. None
/// when absent (a machine without it); under CI it must be there.
fn corpus() -> Option<PathBuf> {
    let dir = match std::env::var_os("APPMESH_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/appmesh/corpus"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the App Mesh corpus is missing at {} (set APPMESH_CORPUS)",
        dir.display()
    );
    eprintln!("skipped: no App Mesh corpus at {}", dir.display());
    None
}

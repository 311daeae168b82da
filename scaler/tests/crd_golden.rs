//! The CRD in `deploy/crds/` is exactly what the Rust types generate. `UPDATE_GOLDEN=1` rewrites it.

use std::path::PathBuf;

#[test]
fn deploy_crd_matches_the_types() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds/servicepolicy.yaml");
    let generated = tidewatch_scaler::crd::crd_yaml();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `tidewatch crdgen > deploy/crds/servicepolicy.yaml` (or UPDATE_GOLDEN=1 cargo test -p tidewatch-scaler --test crd_golden)",
        path.display()
    );
}

//! Finds every service's migrations folder (`services/*/migrations`) so that a
//! new service's migrations are applied without editing this function: writes
//! `$OUT_DIR/services.rs`, one `sqlx::migrate!` per folder, in name order.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let services = Path::new(&manifest).join("../../services");
    println!("cargo:rerun-if-changed={}", services.display());
    let mut folders: Vec<String> = std::fs::read_dir(&services)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join("migrations").is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    folders.sort();
    let mut code = String::from(
        "/// Every service's migrations folder, by service name.\n\
         pub fn service_migrations() -> Vec<(&'static str, sqlx::migrate::Migrator)> {\n    vec![\n",
    );
    for name in &folders {
        let dir = services.join(name).join("migrations");
        println!("cargo:rerun-if-changed={}", dir.display());
        code.push_str(&format!(
            "        ({name:?}, sqlx::migrate!({:?})),\n",
            format!("../../services/{name}/migrations")
        ));
    }
    code.push_str("    ]\n}\n");
    let out = Path::new(&std::env::var("OUT_DIR")?).join("services.rs");
    std::fs::write(out, code)?;
    Ok(())
}

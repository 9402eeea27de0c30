//! Prints or writes the CRD YAML generated from the Rust types.
//! `crdgen` prints to stdout; `crdgen --write DIR` writes `DIR/ingestionpipeline.yaml`.

fn main() -> std::io::Result<()> {
    let yaml = tidewater_crds::render_crds();
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--write"), Some(dir)) => std::fs::write(
            std::path::Path::new(&dir).join("ingestionpipeline.yaml"),
            yaml,
        ),
        (None, None) => {
            print!("{yaml}");
            Ok(())
        }
        _ => {
            eprintln!("usage: crdgen [--write DIR]");
            std::process::exit(2)
        }
    }
}

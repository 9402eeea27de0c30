//! `tidewater-operator`: reconciles IngestionPipeline resources. The controller arrives with
//! the operator issue; today this binary only prints the CRD it will serve.

fn main() {
    print!("{}", tidewater_crds::render_crds());
}

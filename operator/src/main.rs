//! `tidewater-operator`: today prints the CRDs it serves (`kubectl apply -f -`); the
//! controller loop that drives `tidewater_operator::decide` on a cluster is being built.

fn main() {
    print!("{}", tidewater_crds::render_crds());
}

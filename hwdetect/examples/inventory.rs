//! Prints this machine's inventory: `cargo run -p ferrobeam-hwdetect --example inventory [json|prometheus|resources]`.

fn main() {
    let inventory = ferrobeam_hwdetect::Inventory::detect();
    match std::env::args().nth(1).as_deref() {
        Some("json") => println!("{}", inventory.to_json()),
        Some("prometheus") => print!("{}", inventory.prometheus()),
        Some("resources") => {
            for resource in inventory.resources() {
                println!(
                    "{} {:?} {:?} {}",
                    resource.kind,
                    resource.identity,
                    resource.capacity,
                    serde_json::to_string(&resource.unit).unwrap_or_default()
                );
            }
        }
        _ => print!("{}", inventory.summary()),
    }
}

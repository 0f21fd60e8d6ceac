fn main() {
    println!("heap benchmark: not written yet");
}

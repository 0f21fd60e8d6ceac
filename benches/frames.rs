fn main() {
    println!("frames benchmark: not written yet");
}

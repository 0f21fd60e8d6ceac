fn main() {
    println!("paging benchmark: not written yet");
}

fn main() -> std::process::ExitCode {
    nrvna::cmd::nrvna::main()
}

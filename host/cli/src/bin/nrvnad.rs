fn main() -> std::process::ExitCode {
    nrvna::cmd::nrvnad::main()
}

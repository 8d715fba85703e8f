fn main() -> std::process::ExitCode {
    nrvna::cmd::wrk::main()
}

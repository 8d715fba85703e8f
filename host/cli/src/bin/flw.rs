fn main() -> std::process::ExitCode {
    nrvna::cmd::flw::main()
}

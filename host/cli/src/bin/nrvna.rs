fn main() -> std::process::ExitCode {
    nrvna::cli::exit_quietly_on_closed_pipe();
    nrvna::cmd::nrvna::main()
}

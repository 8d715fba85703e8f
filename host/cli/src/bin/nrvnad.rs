fn main() -> std::process::ExitCode {
    // A compile child of this program (agents' components compile in one, bounded).
    if let Some(code) = nrvna_sandbox::serve_compile_child() {
        return code;
    }
    nrvna::cli::exit_quietly_on_closed_pipe();
    nrvna::cmd::nrvnad::main()
}

//! Images a vision job names: read through the `--dir` grant that contains them and
//! staged in the workspace before the job is queued.

use std::path::{Component, Path, PathBuf};

use nrvna_queue::{JobId, Workspace};

use crate::bindings::nrvna::agent::types::JobError;
use crate::kv::AGENTS_DIR;
use crate::run::RunShared;
use crate::text::escaped;

/// Images a job names, copied out of the granted directories into the workspace before
/// submission (so what the job gets is what was checked), removed afterwards.
pub(super) struct StagedImages {
    /// The staged copies, removed when this is dropped.
    paths: Vec<PathBuf>,
}

impl StagedImages {
    pub(super) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    pub(super) fn stage(
        run: &RunShared,
        ws: &Workspace,
        images: &[String],
    ) -> Result<StagedImages, JobError> {
        let mut staged = StagedImages { paths: Vec::new() };
        if images.is_empty() {
            return Ok(staged);
        }
        let dir = ws.root().join(AGENTS_DIR).join(".staging");
        std::fs::create_dir_all(&dir)
            .map_err(|e| JobError::Failed(format!("cannot stage images: {e}")))?;
        let max = ws.limits().max_image_bytes;
        for (i, guest_path) in images.iter().enumerate() {
            let bytes = read_granted(run, guest_path, max)?;
            let ext: String = Path::new(guest_path)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(8)
                .collect();
            let path = dir.join(format!(
                "img-{}-{}-{i}.{ext}",
                std::process::id(),
                JobId::generate()
            ));
            std::fs::write(&path, &bytes)
                .map_err(|e| JobError::Failed(format!("cannot stage image: {e}")))?;
            staged.paths.push(path);
        }
        Ok(staged)
    }
}

impl Drop for StagedImages {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Reads a file the component names by its guest path, through the `--dir` grant that
/// contains it, with cap-std (so `..` and symlinks cannot leave the grant).
fn read_granted(run: &RunShared, guest_path: &str, max: u64) -> Result<Vec<u8>, JobError> {
    use std::io::Read;
    let shown = escaped(guest_path, 200);
    let denied = || {
        JobError::Denied(format!(
            "image {shown} is not inside a directory granted with --dir"
        ))
    };
    let path = Path::new(guest_path);
    let grant = run
        .grants
        .dirs
        .iter()
        .filter_map(|d| path.strip_prefix(&d.guest).ok().map(|rel| (d, rel)))
        .max_by_key(|(d, _)| d.guest.len());
    let Some((grant, rel)) = grant else {
        return Err(denied());
    };
    if guest_path.contains('\0')
        || rel.as_os_str().is_empty()
        || rel.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(denied());
    }
    let dir = cap_std::fs::Dir::open_ambient_dir(&grant.host, cap_std::ambient_authority())
        .map_err(|e| JobError::Failed(format!("image {shown}: {e}")))?;
    // The type is checked before opening: opening a FIFO blocks until a writer comes,
    // and would hold a host thread (and the run) for good. O_NONBLOCK covers a file
    // swapped for one after the check; the handle's own type is checked again below.
    let not_regular = || {
        JobError::Invalid(format!(
            "image {shown} is not a regular file of at most {max} bytes"
        ))
    };
    match dir.metadata(rel) {
        Ok(md) if md.is_file() => {}
        Ok(_) => return Err(not_regular()),
        Err(e) => return Err(JobError::Denied(format!("image {shown}: {e}"))),
    }
    let file = {
        use cap_std::fs::OpenOptionsExt;
        let mut options = cap_std::fs::OpenOptions::new();
        options
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
        dir.open_with(rel, &options)
            .map_err(|e| JobError::Denied(format!("image {shown}: {e}")))?
    };
    let md = file
        .metadata()
        .map_err(|e| JobError::Failed(format!("image {shown}: {e}")))?;
    if !md.is_file() || md.len() > max {
        return Err(not_regular());
    }
    run.budget.charge_image(md.len(), &shown)?;
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| JobError::Failed(format!("image {shown}: {e}")))?;
    Ok(bytes)
}

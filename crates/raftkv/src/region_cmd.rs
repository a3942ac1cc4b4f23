//! `raftkv region ...`: reshaping regions at runtime through the servers' `Admin` service.
//! Each command waits for its effect and exits 0 only then; any refusal is an error (exit
//! status 1) with the server's reason.

use crate::Conn;
use anyhow::{bail, Result};
use clap::Subcommand;
use client::pb;
use std::time::{Duration, Instant};

/// How long `transfer-leader` waits for the target store to lead (it may first have to catch
/// up with the log).
const TRANSFER_WAIT: Duration = Duration::from_secs(10);

#[derive(Subcommand)]
pub(crate) enum RegionCmd {
    /// Split the region holding KEY at KEY (KEY starts the new region); returns once both
    /// regions exist.
    Split {
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make the replica of REGION on STORE its leader; returns once STORE leads it (waiting
    /// up to 10 s for it to catch up).
    TransferLeader {
        region: u64,
        store: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

type AdminClient = pb::admin_client::AdminClient<tonic::transport::Channel>;

async fn connect(endpoint: &str) -> Option<AdminClient> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15));
    ep.connect()
        .await
        .ok()
        .map(pb::admin_client::AdminClient::new)
}

fn describe(e: &pb::Error) -> String {
    let code = pb::error::Code::try_from(e.code)
        .map(|c| c.as_str_name().to_string())
        .unwrap_or_else(|_| e.code.to_string());
    format!("{code}: {}", e.message)
}

fn range(r: &pb::Region) -> String {
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    format!(
        "[{:?}, {})",
        show(&r.start_key),
        if r.has_end {
            format!("{:?}", show(&r.end_key))
        } else {
            "+inf".into()
        }
    )
}

/// Sends `call` to the servers in turn until one answers (a server that is down or not
/// reachable is skipped); the answer's error, if any, is final.
async fn first_answer<F, Fut>(conn: &Conn, mut call: F) -> Result<pb::AdminResponse>
where
    F: FnMut(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<pb::AdminResponse>, tonic::Status>>,
{
    let mut last = String::from("no endpoints given");
    for ep in conn.list() {
        let Some(client) = connect(&ep).await else {
            last = format!("{ep}: not reachable");
            continue;
        };
        match call(client).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => last = format!("{ep}: {}", s.message()),
        }
    }
    bail!("no server answered ({last})")
}

pub(crate) async fn run(cmd: RegionCmd) -> Result<()> {
    match cmd {
        RegionCmd::Split { key, conn } => {
            let req = pb::SplitRegionRequest {
                split_key: key.clone().into_bytes(),
                forwarded: false,
            };
            let r = first_answer(&conn, |mut c| {
                let req = req.clone();
                async move { c.split_region(req).await }
            })
            .await?;
            if let Some(e) = &r.error {
                bail!("split at {key:?} refused: {}", describe(e));
            }
            let [left, right] = r.regions.as_slice() else {
                bail!("split at {key:?}: the server did not report both regions");
            };
            println!("split at {key:?}:");
            println!("  region {} {}", left.id, range(left));
            println!("  region {} {}", right.id, range(right));
        }
        RegionCmd::TransferLeader {
            region,
            store,
            conn,
        } => {
            let deadline = Instant::now() + TRANSFER_WAIT;
            let mut c = client::Client::connect(conn.list()).await?;
            loop {
                let req = pb::TransferLeaderRequest {
                    region_id: region,
                    to_store: store,
                    forwarded: false,
                };
                let r = first_answer(&conn, |mut c| async move { c.transfer_leader(req).await })
                    .await?;
                if let Some(e) = &r.error {
                    let retryable = [pb::error::Code::NotLeader, pb::error::Code::Timeout]
                        .iter()
                        .any(|c| *c as i32 == e.code);
                    if !retryable || Instant::now() >= deadline {
                        bail!(
                            "transfer of region {region} to store {store} refused: {}",
                            describe(e)
                        );
                    }
                }
                // Started (or retrying): wait a while for the store to report leading it.
                let round = Instant::now() + Duration::from_secs(1);
                while Instant::now() < round.min(deadline) {
                    let leads = c.status().await.iter().any(|st| {
                        st.store_id == store
                            && st.regions.iter().any(|r| {
                                r.region.as_ref().is_some_and(|g| g.id == region)
                                    && r.leader_store_id == store
                            })
                    });
                    if leads {
                        println!("store {store} leads region {region}");
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "store {store} did not become the leader of region {region} within {} s",
                        TRANSFER_WAIT.as_secs()
                    );
                }
            }
        }
    }
    Ok(())
}

//! `berth top`: a live table of every container's cost, like `docker stats` with the costs
//! berth measures (syscalls, netfilter µs per packet, new flows), redrawn every interval from
//! `GET /api/v1/query` with one step over the last `--window`.

use std::{io::IsTerminal as _, time::Duration};

use super::{
    client::Client,
    query::{HEADER, Request, rows},
    table,
};
use crate::history::query::QueryView;

pub fn execute_top(
    client: &Client,
    req: &Request<'_>,
    interval: Duration,
    no_stream: bool,
) -> anyhow::Result<i32> {
    if interval < Duration::from_millis(100) {
        anyhow::bail!("--interval {interval:?}: use 100ms or more");
    }
    let tty = std::io::stdout().is_terminal();
    // One step as long as the window: each figure is its mean over the window.
    let req = Request {
        step: Some(req.window),
        ..*req
    };
    loop {
        let view: QueryView = client.call("GET", &req.path(), None)?;
        if tty && !no_stream {
            // Clear the screen and go home, as top does.
            print!("\x1b[2J\x1b[H");
        }
        table(&HEADER, &rows(&view));
        if no_stream {
            return Ok(0);
        }
        std::thread::sleep(interval);
        if !tty {
            println!();
        }
    }
}

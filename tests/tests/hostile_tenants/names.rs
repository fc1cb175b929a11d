//! One name, one machine.

use anyhow::{Result, bail, ensure};
use wmproxy_client::ClientStatus;
use wmproxy_config::Secret;
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::{DEADLINE, backend, echo_client};
use wmproxy_tests::{TOKEN, TestClient, TestServer, client_entry, init_tracing, raw};
use wmproxy_tunnel::{datastream, probe};
use wmproxy_wire::{HelloReply, OpenStream, RejectReason, ResumeSecret};

/// The client's status is `Connecting` with an error that contains `says`.
fn refused_with(says: &'static str) -> impl Fn(&ClientStatus) -> bool {
    move |s| matches!(s, ClientStatus::Connecting { last_error: Some(e), .. } if e.contains(says))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_machine_cannot_take_a_live_clients_name_and_takes_over_when_it_leaves() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (mut home, public) = echo_client(&server, "home").await?;

    // Another machine with the shared token and the same name: the live client answers the
    // server's ping, so the newcomer is refused and keeps trying.
    let mut impostor = TestClient::start(server.client_config("home")).await?;
    impostor.wait_for("the second machine refused", refused_with("another machine is connected")).await?;
    backend::assert_echo(public, 4096, 1).await?;
    ensure!(matches!(&*home.status.borrow(), ClientStatus::Connected { .. }), "the first was replaced");
    let refused = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "name_in_use")]);
    ensure!(refused >= Some(1.0), "name_in_use refusals: {refused:?}");

    // When the first machine leaves, the name is free and the second comes in.
    home.stop().await?;
    impostor.wait_for("the second machine connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    ensure!(server.handle.clients() == ["home"], "{:?}", server.handle.clients());
    Ok(())
}

/// Answers the server's pings on `conn`, as a live client does.
fn answer_pings(conn: quinn::Connection) {
    tokio::spawn(async move {
        while let Ok((send, recv)) = conn.accept_bi().await {
            if let Some((send, _, OpenStream::Ping)) = datastream::read_header(send.into(), recv.into(), DEADLINE).await
            {
                probe::answer(send).await;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_back_with_its_resume_secret_replaces_its_session_at_once() -> Result<()> {
    init_tracing();
    // One client place: a replacing session takes the place of the one it replaces.
    let server = TestServer::start(|f| f.limits.max_clients = 1).await?;
    let (_old_endpoint, old) = raw::connect(&server).await?;
    let (HelloReply::Welcome { resume, .. }, _send, _recv) = raw::hello(&old, "laptop", TOKEN, None).await? else {
        bail!("not welcomed");
    };
    answer_pings(old.clone());

    // A wrong secret is no secret: the live session is asked, answers, and keeps its name.
    let (_endpoint, other) = raw::connect(&server).await?;
    let (reply, ..) = raw::hello(&other, "laptop", TOKEN, Some(ResumeSecret([0; 32]))).await?;
    ensure!(reply == HelloReply::Reject(RejectReason::NameInUse), "{reply:?}");

    // The same machine on a new connection (a new address after a network change), while the
    // old one still answers: its secret replaces the old session without asking it.
    let (_new_endpoint, new) = raw::connect(&server).await?;
    let (reply, _send, _recv) = raw::hello(&new, "laptop", TOKEN, Some(resume)).await?;
    ensure!(matches!(reply, HelloReply::Welcome { .. }), "{reply:?}");
    let closed = tokio::time::timeout(DEADLINE, old.closed()).await?;
    ensure!(closed.to_string().contains("replaced by a newer connection"), "{closed}");

    // A session that no longer answers (this one serves no streams: a hung client, or one
    // that restarted and lost its secret) is replaced once the ping times out.
    let (_third_endpoint, third) = raw::connect(&server).await?;
    let (reply, _send, _recv) = raw::hello(&third, "laptop", TOKEN, None).await?;
    ensure!(matches!(reply, HelloReply::Welcome { .. }), "{reply:?}");
    let closed = tokio::time::timeout(DEADLINE, new.closed()).await?;
    ensure!(closed.to_string().contains("replaced by a newer connection"), "{closed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_token_has_a_cap_on_live_names() -> Result<()> {
    init_tracing();
    const OFFICE_TOKEN: &str = "office-token-secret-42";
    let server = TestServer::start(|f| {
        f.limits.max_shared_clients = 2;
        f.clients.push(client_entry("office", OFFICE_TOKEN));
    })
    .await?;
    let (mut first, _) = echo_client(&server, "first").await?;
    let (_second, _) = echo_client(&server, "second").await?;
    let mut third = TestClient::start(server.client_config("third")).await?;
    third.wait_for("the third shared name refused", refused_with("names for the shared token")).await?;
    // A client with a token of its own is not one of them.
    let mut office = server.client_config("office");
    office.servers[0].token = Secret::new(OFFICE_TOKEN);
    let mut office = TestClient::start(office).await?;
    office.wait_for("the named client connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;

    first.stop().await?;
    third.wait_for("the third connected once a name is free", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let refused = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "shared_token_full")]);
    ensure!(refused >= Some(1.0), "shared_token_full refusals: {refused:?}");
    Ok(())
}

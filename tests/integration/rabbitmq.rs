//! An external plugin through the daemon: `examples/plugins/rabbitmq`
//! (Python, gRPC over a Unix socket, pinned by its SHA-256) against the
//! RabbitMQ node `scripts/test` starts (`tests/common/rabbitmq.rs`). A
//! credential issued for a role with vhost permissions and tags is a
//! RabbitMQ user with exactly those, which logs in over AMQP with pika and
//! may declare only the queues its `configure` pattern allows; revoking
//! the lease deletes the user and its login is refused; a short lease's
//! user is deleted at expiry; a role on a vhost the node lacks fails the
//! issuance, naming the vhost, and leaves no user.

use std::time::Duration;

use crate::common::rabbitmq::{Login, Rabbitmq};
use crate::common::*;

const SETTLE: Duration = Duration::from_secs(60);

fn config(node: &Rabbitmq) -> String {
    format!(
        "{}\n{}\n\
         [roles.amqp_app]\nconnection = \"rmq\"\ndefault_ttl = \"1h\"\nmax_ttl = \"2h\"\n\
         vhosts = {{ \"/\" = {{ configure = \"^lessor-test-.*\", write = \".*\", read = \".*\" }} }}\n\
         tags = [\"monitoring\"]\n\n\
         [roles.nowhere]\nconnection = \"rmq\"\ndefault_ttl = \"1h\"\nmax_ttl = \"2h\"\n\
         vhosts = {{ \"lessor-no-such-vhost\" = {{ read = \".*\" }} }}\n",
        node.plugin_section(),
        node.connection_section("rmq"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_users_are_issued_with_their_permissions_and_tags_revoked_and_expired() {
    let node = Rabbitmq::from_env();
    let db = TestDb::create().await;
    let daemon = Daemon::start(&db, &config(&node)).await;
    let client = daemon.client();

    let issued = client.creds("amqp_app", None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let user = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
    node.track(&user);
    assert!(user.starts_with("v_amqp_app_"), "{user}");

    // RabbitMQ's view: the user, its tags, its permissions on "/" only.
    assert!(node.user(&user).await.is_some(), "the issued user is not on the node");
    assert_eq!(node.tags(&user).await, vec!["monitoring".to_string()]);
    assert_eq!(
        node.permissions(&user).await,
        vec![("/".to_string(), "^lessor-test-.*".to_string(), ".*".to_string(), ".*".to_string())]
    );

    // A real AMQP login: it may declare lessor-test-* queues, no others.
    let queue = format!("lessor-test-{}", rand_suffix(8));
    assert_eq!(node.amqp_login(&user, &password, &queue), Login::In { declared: true });
    let elsewhere = format!("elsewhere-{}", rand_suffix(8));
    assert_eq!(node.amqp_login(&user, &password, &elsewhere), Login::In { declared: false });
    assert_eq!(node.amqp_login(&user, "not-the-password", &queue), Login::Refused);

    // Revoked: the user is gone and its login refused.
    let revoked = client.revoke(&lease_id).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}\n{}", revoked.body, daemon.log());
    assert!(node.user(&user).await.is_none(), "the revoked user is still on the node");
    assert_eq!(node.amqp_login(&user, &password, &queue), Login::Refused);

    // Expired: a 2 s lease's user is deleted without being asked.
    let short = client.creds("amqp_app", Some("2s")).await.unwrap();
    assert_eq!(short.status, 200, "{:?}", short.body);
    let short_user = short.body["credential"]["username"].as_str().unwrap().to_string();
    node.track(&short_user);
    assert!(node.user(&short_user).await.is_some());
    wait_for("the expired user to be deleted", SETTLE, || async {
        node.user(&short_user).await.is_none().then_some(())
    })
    .await;

    // The plugin's stderr is relayed into lessor's log; no password in it.
    let log = daemon.log();
    assert!(log.contains(&format!("created user {user}")), "the plugin's log is not relayed:\n{log}");
    assert!(!log.contains(&password), "a password is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_on_a_missing_vhost_fails_the_issuance_naming_it_and_leaves_no_user() {
    let node = Rabbitmq::from_env();
    let db = TestDb::create().await;
    let daemon = Daemon::start(&db, &config(&node)).await;

    let failed = daemon.client().creds("nowhere", None).await.unwrap();
    assert_eq!(failed.status, 502, "{:?}\n{}", failed.body, daemon.log());
    let said = failed.body.to_string();
    assert!(said.contains("lessor-no-such-vhost"), "the failure does not name the vhost: {said}");
    for user in node.users_with_prefix("v_nowhere_").await {
        node.track(&user);
    }
    assert_eq!(
        node.users_with_prefix("v_nowhere_").await,
        Vec::<String>::new(),
        "a refused issuance left a user"
    );
}

//! The blob store against a real S3-compatible server (SeaweedFS), directly and through a
//! node configured with `[blob] backend = "s3"`.

use reqwest::{Method, StatusCode};
use serde_json::json;
use wmail_storage::BlobId;

use crate::harness::WmailNode;
use crate::peers::SeaweedFs;

#[tokio::test]
async fn s3_blob_store_passes_the_conformance_suite() {
    let seaweed = SeaweedFs::start().await;
    wmail_storage::blob_testsuite::run(&seaweed.blob_store()).await;
}

#[tokio::test]
async fn a_node_on_s3_keeps_bodies_in_the_bucket_across_kill_9() {
    let seaweed = SeaweedFs::start().await;
    let mut node = WmailNode::new(&seaweed.wmail_config());
    node.start().await;
    let (status, _) = node.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    for address in ["a@example.com", "b@example.com"] {
        let body = json!({ "address": address, "password": "long enough" });
        assert_eq!(node.api(Method::POST, "/accounts", Some(body)).await.0, StatusCode::CREATED);
    }
    let alias = json!({ "alias": "both@example.com", "targets": ["a@example.com", "b@example.com"] });
    assert_eq!(node.api(Method::POST, "/aliases", Some(alias)).await.0, StatusCode::CREATED);
    let message = b"Subject: stored in S3\r\n\r\nhello\r\n".to_vec();
    let (status, reply) = node.deliver("both@example.com", message.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    node.kill9();
    node.start().await;

    // One body in the bucket serves both recipients (single-instance storage).
    let store = seaweed.blob_store();
    assert_eq!(store.read_all(&BlobId::of(&message)).await.expect("blob in the bucket"), message);
    for address in ["a@example.com", "b@example.com"] {
        let (_, messages) = node.api(Method::GET, &format!("/accounts/{address}/messages"), None).await;
        assert_eq!(messages[0]["blob"], json!(BlobId::of(&message).to_hex()), "{messages}");
        assert_eq!(node.read_message(address, 1).await, message);
    }
}

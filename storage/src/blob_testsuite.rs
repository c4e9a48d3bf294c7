//! The conformance suite every [`BlobStore`] backend must pass; run against the local
//! directory by this crate's tests and against a real S3 server by `wmail-tests`.

use bytes::Bytes;
use futures::TryStreamExt;

use crate::blob::{BlobId, BlobStore, S3_PART_SIZE};
use crate::error::ErrorKind;

/// Deterministic, incompressible-looking test bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// Runs every check against `store`; panics with a description on the first failure.
pub async fn run(store: &BlobStore) {
    small_blob_round_trips(store).await;
    empty_blob_is_valid(store).await;
    identical_content_gets_one_address(store).await;
    large_streamed_blob_round_trips(store).await;
    ranges_read_the_right_bytes(store).await;
    missing_blob_is_not_found(store).await;
    delete_removes_and_is_idempotent(store).await;
    failed_body_stores_nothing(store).await;
    listing_finds_blobs_by_age(store).await;
}

async fn listing_finds_blobs_by_age(store: &BlobStore) {
    let stored = store.put_bytes(Bytes::from(pattern(512, 19))).await.expect("put");
    let listed = store.list_written_before(u64::MAX, usize::MAX).await.expect("list");
    assert!(listed.contains(&stored.id), "a stored blob is listed");
    let listed = store.list_written_before(0, usize::MAX).await.expect("list");
    assert!(listed.is_empty(), "nothing was written before the epoch");
}

async fn small_blob_round_trips(store: &BlobStore) {
    let body = Bytes::from_static(b"Subject: hi\r\n\r\nhello\r\n");
    let stored = store.put_bytes(body.clone()).await.expect("put small blob");
    assert_eq!(stored.id, BlobId::of(&body));
    assert_eq!(stored.size, body.len() as u64);
    assert_eq!(store.read_all(&stored.id).await.expect("read small blob"), body);
    assert_eq!(store.size(&stored.id).await.expect("size"), body.len() as u64);
    assert!(store.exists(&stored.id).await.expect("exists"));
}

async fn empty_blob_is_valid(store: &BlobStore) {
    let stored = store.put_bytes(Bytes::new()).await.expect("put empty blob");
    assert_eq!(stored.size, 0);
    assert!(store.read_all(&stored.id).await.expect("read empty blob").is_empty());
}

async fn identical_content_gets_one_address(store: &BlobStore) {
    let body = Bytes::from(pattern(10_000, 3));
    let (first, second) = tokio::join!(store.put_bytes(body.clone()), store.put_bytes(body.clone()));
    let (first, second) = (first.expect("first put"), second.expect("second put"));
    assert_eq!(first, second);
    assert_eq!(store.read_all(&first.id).await.expect("read"), body);
}

async fn large_streamed_blob_round_trips(store: &BlobStore) {
    // More than two S3 parts, delivered in odd-sized chunks.
    let body = pattern(2 * S3_PART_SIZE + 12_345, 7);
    let chunks: Vec<std::io::Result<Bytes>> =
        body.chunks(65_521).map(|chunk| Ok(Bytes::copy_from_slice(chunk))).collect();
    let stored = store.put_stream(futures::stream::iter(chunks)).await.expect("put large blob");
    assert_eq!(stored.id, BlobId::of(&body));
    assert_eq!(stored.size, body.len() as u64);
    let streamed: Vec<Bytes> = store.get(&stored.id).await.expect("get").try_collect().await.expect("stream");
    assert_eq!(streamed.concat(), body, "streamed read differs");
}

async fn ranges_read_the_right_bytes(store: &BlobStore) {
    let body = pattern(100_000, 11);
    let stored = store.put_bytes(Bytes::from(body.clone())).await.expect("put");
    for range in [0..1, 10..20_000, 99_999..100_000] {
        let read = store.get_range(&stored.id, range.clone()).await.expect("range");
        assert_eq!(&read[..], &body[range.start as usize..range.end as usize]);
    }
}

async fn missing_blob_is_not_found(store: &BlobStore) {
    let missing = BlobId::of(b"never stored in any conformance run");
    assert!(!store.exists(&missing).await.expect("exists of missing blob"));
    let error = store.read_all(&missing).await.expect_err("reading a missing blob fails");
    assert_eq!(error.kind(), ErrorKind::NotFound);
}

async fn delete_removes_and_is_idempotent(store: &BlobStore) {
    let stored = store.put_bytes(Bytes::from(pattern(4096, 13))).await.expect("put");
    store.delete(&stored.id).await.expect("delete");
    assert!(!store.exists(&stored.id).await.expect("exists after delete"));
    store.delete(&stored.id).await.expect("second delete");
}

async fn failed_body_stores_nothing(store: &BlobStore) {
    let good = Bytes::from(pattern(1000, 17));
    let chunks = vec![Ok(good.clone()), Err(std::io::Error::other("client vanished"))];
    store.put_stream(futures::stream::iter(chunks)).await.expect_err("a failing body fails the put");
    assert!(!store.exists(&BlobId::of(&good)).await.expect("exists"), "partial body stored under its hash");
}

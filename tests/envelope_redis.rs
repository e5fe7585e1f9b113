//! The envelope survives a real Redis Stream: what `to_stream_fields` writes with
//! `XADD`, `XRANGE` reads back into an equal envelope.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use anyhow::Result;
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;
use shared::envelope::{AggregateId, AggregateType, EventEnvelope, EventType, Payload};
use shared::trace::TraceParent;

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn an_envelope_round_trips_through_xadd_and_xrange() -> Result<()> {
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let stream = format!("test:envelope:{}", uuid::Uuid::now_v7());
    let event = EventEnvelope::new(
        EventType::parse("OrderCreated")?,
        1,
        AggregateType::parse("Order")?,
        AggregateId::parse(&uuid::Uuid::now_v7().to_string())?,
        Some(TraceParent::new_root()),
        Payload::from_json(
            r#"{"note": "ünïcødé, \"quotes\", \r\n and a 😀",  "total_cents": 4498, "z": 1.50}"#,
        )?,
    );
    let _: String = conn.xadd(&stream, "*", &event.to_stream_fields()).await?;
    let reply: StreamRangeReply = conn.xrange_all(&stream).await?;
    let _: () = conn.del(&stream).await?;
    assert_eq!(reply.ids.len(), 1);
    let fields = reply.ids[0].map.iter().map(|(k, v)| {
        let bytes: Vec<u8> = redis::from_redis_value(v.clone()).unwrap_or_default();
        (k.clone(), bytes)
    });
    assert_eq!(EventEnvelope::from_stream_fields(fields)?, event);
    Ok(())
}

//! Session methods over threads: which are loaded, archiving, naming, and
//! paging through a thread's turns.

use serde_json::json;
use skein_app_server_protocol::v2::{
    SortDirection, ThreadArchiveParams, ThreadLoadedListParams, ThreadLoadedListResponse,
    ThreadSetNameParams, ThreadTurnsListParams, ThreadTurnsListResponse, ThreadUnarchiveResponse,
    TurnItemsView,
};
use skein_app_server_protocol::{ErrorObject, OutgoingNotification};
use skein_core::TurnRecord;
use skein_protocol::{Event, EventMsg};

use crate::processor::{HandlerResult, MessageProcessor, thread_error, to_result};
use crate::session::ConnectionSession;
use crate::wire::turn_to_wire;

/// Default page size of the listings here.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size of the listings here.
pub const MAX_PAGE_SIZE: usize = 500;

/// Cursor prefix continuing after a turn (exclusive).
const AFTER: &str = "after:";
/// Cursor prefix starting at a turn (inclusive), for paging back.
const FROM: &str = "from:";

fn page_size(limit: Option<u32>) -> usize {
    limit
        .map_or(DEFAULT_PAGE_SIZE, |l| l as usize)
        .clamp(1, MAX_PAGE_SIZE)
}

impl MessageProcessor {
    /// `thread/loaded/list`: ids of the threads loaded in this server,
    /// oldest first.
    pub(crate) fn thread_loaded_list(&self, params: ThreadLoadedListParams) -> HandlerResult {
        let limit = page_size(params.limit);
        let ids = self.threads.loaded_ids();
        let start = match params.cursor.as_deref() {
            None => 0,
            Some(cursor) => ids
                .iter()
                .position(|id| id.as_str() > cursor)
                .unwrap_or(ids.len()),
        };
        let data: Vec<String> = ids.iter().skip(start).take(limit).cloned().collect();
        let next_cursor = if start + data.len() < ids.len() {
            data.last().cloned()
        } else {
            None
        };
        to_result(ThreadLoadedListResponse { data, next_cursor })
    }

    /// `thread/archive`: flags the thread archived in its history. Every
    /// connection following the thread gets `thread/status/changed` and
    /// `thread/archived` (core sends them); so does the caller when it
    /// does not follow it.
    pub(crate) async fn thread_archive(
        &self,
        params: ThreadArchiveParams,
        session: &ConnectionSession,
    ) -> HandlerResult {
        let change = self
            .threads
            .set_archived(&params.thread_id, true)
            .await
            .map_err(thread_error)?;
        Self::tell_caller(session, change.events, &params.thread_id);
        to_result(json!({}))
    }

    /// `thread/unarchive`: clears the flag; returns the thread. Followers
    /// (and the caller) get `thread/unarchived`.
    pub(crate) async fn thread_unarchive(
        &self,
        params: ThreadArchiveParams,
        session: &ConnectionSession,
    ) -> HandlerResult {
        let change = self
            .threads
            .set_archived(&params.thread_id, false)
            .await
            .map_err(thread_error)?;
        Self::tell_caller(session, change.events, &params.thread_id);
        to_result(ThreadUnarchiveResponse {
            thread: self.wire_thread(&change.info, &[]),
        })
    }

    /// `thread/name/set`: names the thread in its history. Followers (and
    /// the caller) get `thread/name/updated`.
    pub(crate) async fn thread_name_set(
        &self,
        params: ThreadSetNameParams,
        session: &ConnectionSession,
    ) -> HandlerResult {
        let change = self
            .threads
            .set_name(&params.thread_id, &params.name)
            .await
            .map_err(thread_error)?;
        Self::tell_caller(session, change.events, &params.thread_id);
        to_result(json!({}))
    }

    /// Sends the caller, when it does not follow thread `thread_id`, the
    /// notifications of the `events` core sent the thread's followers.
    fn tell_caller(session: &ConnectionSession, events: Vec<EventMsg>, thread_id: &str) {
        if session.follows(thread_id) {
            return;
        }
        for msg in events {
            let event = Event {
                thread_id: thread_id.to_owned(),
                msg,
                trace: None,
                at_ms: 0,
            };
            if let Some(notification) = crate::wire::notification(event) {
                session.notify(OutgoingNotification::new(notification));
            }
        }
    }

    /// `thread/turns/list`: a page of the thread's turns, newest first by
    /// default.
    pub(crate) fn thread_turns_list(&self, params: ThreadTurnsListParams) -> HandlerResult {
        let turns = self
            .threads
            .turns(&params.thread_id)
            .map_err(thread_error)?;
        let page = page_turns(
            turns,
            params.cursor.as_deref(),
            page_size(params.limit),
            params.sort_direction.unwrap_or_default(),
        )?;
        let with_items = params.items_view != Some(TurnItemsView::NotLoaded);
        let data = page
            .turns
            .iter()
            .map(|record| {
                let mut turn = turn_to_wire(record);
                if with_items {
                    turn.items_view = Some(TurnItemsView::Full);
                } else {
                    turn.items.clear();
                    turn.items_view = Some(TurnItemsView::NotLoaded);
                }
                turn
            })
            .collect();
        to_result(ThreadTurnsListResponse {
            data,
            next_cursor: page.next_cursor,
            backwards_cursor: page.backwards_cursor,
        })
    }
}

/// One page of turns and the cursors around it.
#[derive(Debug, PartialEq)]
struct TurnPage {
    turns: Vec<TurnRecord>,
    next_cursor: Option<String>,
    backwards_cursor: Option<String>,
}

/// Orders `turns` (oldest first) by `direction` and cuts the page that
/// `cursor` points to. `after:<turn>` continues after that turn,
/// `from:<turn>` starts at it.
fn page_turns(
    mut turns: Vec<TurnRecord>,
    cursor: Option<&str>,
    limit: usize,
    direction: SortDirection,
) -> Result<TurnPage, ErrorObject> {
    if direction == SortDirection::Desc {
        turns.reverse();
    }
    let position = |id: &str| {
        turns
            .iter()
            .position(|t| t.id == id)
            .ok_or_else(|| ErrorObject::invalid_params(format!("unknown cursor {cursor:?}")))
    };
    let start = match cursor {
        None => 0,
        Some(c) => match (c.strip_prefix(AFTER), c.strip_prefix(FROM)) {
            (Some(id), _) => position(id)? + 1,
            (_, Some(id)) => position(id)?,
            _ => {
                return Err(ErrorObject::invalid_params(format!(
                    "invalid cursor {c:?}: pass a cursor from a previous page"
                )));
            }
        },
    };
    let end = (start + limit).min(turns.len());
    let page: Vec<TurnRecord> = turns.get(start..end).map(<[_]>::to_vec).unwrap_or_default();
    let next_cursor = (end < turns.len())
        .then(|| page.last().map(|t| format!("{AFTER}{}", t.id)))
        .flatten();
    let backwards_cursor = page.first().map(|t| format!("{FROM}{}", t.id));
    Ok(TurnPage {
        turns: page,
        next_cursor,
        backwards_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::{TokenUsage, TurnKind, TurnStatus};

    fn turns(n: usize) -> Vec<TurnRecord> {
        (0..n)
            .map(|i| TurnRecord {
                id: format!("t{i}"),
                kind: TurnKind::Regular,
                status: TurnStatus::Completed,
                input: String::new(),
                output: String::new(),
                error: None,
                usage: TokenUsage::default(),
                trace_id: None,
                span_id: None,
                items: Vec::new(),
            })
            .collect()
    }

    fn ids(page: &TurnPage) -> Vec<&str> {
        page.turns.iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn pages_newest_first_without_gaps_and_pages_back_from_the_anchor() {
        let first = page_turns(turns(5), None, 2, SortDirection::Desc).expect("page");
        assert_eq!(ids(&first), ["t4", "t3"]);
        let second = page_turns(
            turns(5),
            first.next_cursor.as_deref(),
            2,
            SortDirection::Desc,
        )
        .expect("page");
        assert_eq!(ids(&second), ["t2", "t1"]);
        let last = page_turns(
            turns(5),
            second.next_cursor.as_deref(),
            2,
            SortDirection::Desc,
        )
        .expect("page");
        assert_eq!(ids(&last), ["t0"]);
        assert_eq!(last.next_cursor, None);
        let back = page_turns(
            turns(5),
            second.backwards_cursor.as_deref(),
            10,
            SortDirection::Asc,
        )
        .expect("page");
        assert_eq!(ids(&back), ["t2", "t3", "t4"]);
    }

    #[test]
    fn a_foreign_cursor_is_invalid_params() {
        for cursor in ["after:nope", "garbage"] {
            let err =
                page_turns(turns(2), Some(cursor), 2, SortDirection::Asc).expect_err("must fail");
            assert_eq!(err.code, skein_app_server_protocol::jsonrpc::INVALID_PARAMS);
        }
    }
}

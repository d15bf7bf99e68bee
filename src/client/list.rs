//! `kiln list`: the jobs or batches the caller may see, newest first, a page at a time (`GET
//! /v1/jobs?order=newest`, `GET /v1/batches`), one line each, with the flag that gives the next
//! page when there is one.

use std::io::Write;

use serde_json::Value;

use super::api::Api;
use super::show::{print_json, print_stdout};
use super::{ClientError, Conclusion, note, paint};

/// What `kiln list` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    Jobs,
    Batches,
}

/// The filters and page of a listing, as given on the command line.
pub(super) struct Filters {
    pub(super) status: Option<String>,
    pub(super) outcome: Option<String>,
    pub(super) runtime: Option<String>,
    pub(super) batch: Option<String>,
    pub(super) since: Option<String>,
    pub(super) until: Option<String>,
    pub(super) tenant: Option<String>,
    pub(super) limit: u32,
    pub(super) before: Option<String>,
}

pub(super) async fn list(
    api: &Api,
    what: What,
    filters: Filters,
    json: bool,
) -> Result<Conclusion, ClientError> {
    let mut query = vec![
        ("order", "newest".to_owned()),
        ("limit", filters.limit.to_string()),
    ];
    let job_filters = [
        ("status", filters.status),
        ("outcome", filters.outcome),
        ("runtime", filters.runtime),
        ("batch", filters.batch),
        ("since", filters.since),
        ("until", filters.until),
    ];
    for (name, value) in job_filters {
        let Some(value) = value else { continue };
        if what == What::Batches {
            return Err(ClientError::Usage(format!(
                "--{name} filters jobs, not batches"
            )));
        }
        query.push((name, value));
    }
    query.extend(filters.tenant.map(|tenant| ("tenant", tenant)));
    query.extend(filters.before.map(|before| ("before", before)));
    let (segment, rows_key) = match what {
        What::Jobs => ("jobs", "jobs"),
        What::Batches => ("batches", "batches"),
    };
    let page = api.get(&[segment], &query).await?;
    if json {
        print_json(&page)?;
        return Ok(Conclusion::Success);
    }
    let rows = page
        .get(rows_key)
        .and_then(Value::as_array)
        .ok_or_else(|| ClientError::BadResponse {
            url: api.base.to_string(),
            detail: format!("no {rows_key:?} list in the answer"),
        })?;
    let colour = paint::enabled();
    print_stdout(|out| {
        for row in rows {
            let line = match what {
                What::Jobs => job_row(row, colour),
                What::Batches => batch_row(row, colour),
            };
            writeln!(out, "{line}")?;
        }
        Ok(())
    })?;
    if rows.is_empty() {
        note(&format!("no {rows_key}"));
    }
    if let Some(next) = page.get("next_before").and_then(Value::as_str) {
        note(&format!("more may follow: use --before {next}"));
    }
    Ok(Conclusion::Success)
}

/// `<id>  <created>  <status (outcome)>  <runtime>  [batch <id>]`.
fn job_row(job: &Value, colour: bool) -> String {
    let text = |name: &str| job.get(name).and_then(Value::as_str).unwrap_or("-");
    let status = text("status");
    let shown = match job.get("outcome").and_then(Value::as_str) {
        Some(outcome) if outcome != status => format!("{status} ({outcome})"),
        _ => status.to_owned(),
    };
    let padded = paint::with(colour, status, &format!("{shown:<26}"));
    let mut line = format!(
        "{}  {}  {padded}  {}",
        text("id"),
        text("created_at"),
        text("runtime")
    );
    if let Some(batch) = job.get("batch_id").and_then(Value::as_str) {
        line.push_str(&format!("  batch {batch}"));
    }
    line
}

/// `<id>  <created>  <done>/<total> done  <passed> passed  <failed> failed  [running]`.
fn batch_row(batch: &Value, colour: bool) -> String {
    let text = |name: &str| batch.get(name).and_then(Value::as_str).unwrap_or("-");
    let tally = |name: &str| {
        batch
            .get("progress")
            .and_then(|p| p.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let number = |name: &str| batch.get(name).and_then(Value::as_u64).unwrap_or(0);
    let (passed, failed) = (number("passed"), number("failed"));
    let state = match (batch.get("done").and_then(Value::as_bool), failed) {
        (Some(false), _) => "running",
        (_, 0) => "passed",
        _ => "failed",
    };
    let shown = paint::with(colour, state, &format!("{state:<7}"));
    format!(
        "{}  {}  {shown}  {}/{} done  {passed} passed  {failed} failed  {}",
        text("id"),
        text("created_at"),
        tally("done"),
        tally("total"),
        text("runtime"),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_job_row_names_its_batch_and_a_batch_row_its_tally() {
        let job = json!({"id": "j1", "created_at": "t", "status": "failed",
            "outcome": "nonzero_exit", "runtime": "sh", "batch_id": "b1"});
        assert_eq!(
            job_row(&job, false),
            "j1  t  failed (nonzero_exit)       sh  batch b1"
        );
        let batch = json!({"id": "b1", "created_at": "t", "done": false, "passed": 1,
            "failed": 0, "progress": {"done": 1, "total": 3}, "runtime": "python"});
        assert_eq!(
            batch_row(&batch, false),
            "b1  t  running  1/3 done  1 passed  0 failed  python"
        );
    }
}

use std::collections::BTreeMap;
use std::io::Write;

use squall_pipeline_core::Value;

use super::*;

fn spec(dir: &tempfile::TempDir, name: &str, body: &str, channel: Channel) -> AudienceSpec {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    AudienceSpec {
        format: Format::from_path(&path),
        path,
        postgres: None,
        columns: None,
        id_field: "id".into(),
        address_field: match channel {
            Channel::Sms => "phone".into(),
            _ => "email".into(),
        },
        declared: BTreeMap::new(),
        channel,
    }
}

fn read_all(spec: &AudienceSpec) -> Vec<Row> {
    AudienceReader::open(spec)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn csv_values_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        &dir,
        "a.csv",
        "id,email,ltv,vip,zip,name\n1,a@x.test,600.5,true,01234,\n",
        Channel::Email,
    );
    let rows = read_all(&s);
    let Row::Valid(r) = &rows[0] else {
        panic!("{rows:?}")
    };
    assert_eq!(r.line, 2);
    assert_eq!(
        r.record.values,
        vec![
            Some(Value::Text("1".into())),
            Some(Value::Text("a@x.test".into())),
            Some(Value::Number(600.5)),
            Some(Value::Bool(true)),
            Some(Value::Text("01234".into())),
            None,
        ]
    );
    assert_eq!(r.record.address, "a@x.test");
}

#[test]
fn bad_csv_rows_are_rejected_with_line_and_reason_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let body =
        "id,email,ltv\n1,a@x.test,1\n2,not-an-email,1\n3,c@x.test\n,d@x.test,4\n5,e@x.test,5\n";
    let rows = read_all(&spec(&dir, "a.csv", body, Channel::Email));
    let rejects: Vec<_> = rows
        .iter()
        .filter_map(|r| match r {
            Row::Rejected { reject, .. } => Some((reject.line, reject.reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(rejects.len(), 3, "{rejects:?}");
    assert_eq!(rejects[0].0, 3);
    assert!(
        rejects[0].1.contains("not a valid email"),
        "{}",
        rejects[0].1
    );
    assert_eq!(rejects[1].0, 4);
    assert!(rejects[1].1.contains("has 2 fields, the header has 3"));
    assert_eq!(rejects[2].0, 5);
    assert!(rejects[2].1.contains("missing recipient id"));
    assert!(matches!(rows.last(), Some(Row::Valid(r)) if r.record.id == "5" && r.index == 4));
}

#[test]
fn declared_types_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(
        &dir,
        "a.csv",
        "id,email,ltv,zip\n1,a@x.test,abc,12\n2,b@x.test,3,0042\n",
        Channel::Email,
    );
    s.declared.insert("ltv".into(), FieldType::Number);
    s.declared.insert("zip".into(), FieldType::String);
    let rows = read_all(&s);
    assert!(
        matches!(&rows[0], Row::Rejected { reject, .. } if reject.reason.contains("`abc` is not a number"))
    );
    let Row::Valid(r) = &rows[1] else { panic!() };
    assert_eq!(r.record.values[3], Some(Value::Text("0042".into())));
}

#[test]
fn sms_needs_e164_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let rows = read_all(&spec(
        &dir,
        "a.csv",
        "id,phone\n1,+4915112345678\n2,0151 123\n",
        Channel::Sms,
    ));
    assert!(matches!(&rows[0], Row::Valid(_)));
    assert!(matches!(&rows[1], Row::Rejected { reject, .. } if reject.reason.contains("E.164")));
}

#[test]
fn jsonl_rows_keep_json_types_and_reject_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let body = "{\"id\": 7, \"email\": \"a@x.test\", \"ltv\": 12, \"tags\": [\"a\"]}\n\n{broken\n[1,2]\n{\"id\":\"8\",\"email\":\"b@x.test\",\"ltv\":null}\n";
    let s = spec(&dir, "a.jsonl", body, Channel::Email);
    let reader = AudienceReader::open(&s).unwrap();
    // Keys are taken in serde_json's (sorted) order.
    assert_eq!(reader.columns(), &["email", "id", "ltv", "tags"]);
    let rows: Vec<Row> = reader.map(Result::unwrap).collect();
    assert_eq!(rows.len(), 4);
    let Row::Valid(first) = &rows[0] else {
        panic!()
    };
    assert_eq!(first.record.id, "7");
    assert_eq!(first.record.values[2], Some(Value::Number(12.0)));
    assert_eq!(first.record.values[3], Some(Value::Text("[\"a\"]".into())));
    assert!(
        matches!(&rows[1], Row::Rejected { reject, .. } if reject.line == 3 && reject.reason.contains("not valid JSON"))
    );
    assert!(
        matches!(&rows[2], Row::Rejected { reject, .. } if reject.line == 4 && reject.reason.contains("not a JSON object"))
    );
    let Row::Valid(last) = &rows[3] else { panic!() };
    assert_eq!((last.line, last.record.values[2].clone()), (5, None));
}

#[test]
fn a_missing_id_or_address_column_is_an_error_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&dir, "a.csv", "id,mail\n1,a@x.test\n", Channel::Email);
    let err = AudienceReader::open(&s).err().unwrap().to_string();
    assert!(err.contains("no `email` field (the address)"), "{err}");
}

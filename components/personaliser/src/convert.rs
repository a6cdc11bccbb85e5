include!("../../shared/convert.rs");

use std::path::PathBuf;

use super::*;
use crate::npy::encode_header;

/// A fresh directory under the system's temp dir, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "gdrx-feed-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn npy(descr: &str, shape: &[u64], data: &[u8]) -> Vec<u8> {
    let mut v = encode_header(descr, shape);
    v.extend_from_slice(data);
    v
}

fn f32s(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn i64s(v: impl IntoIterator<Item = i64>) -> Vec<u8> {
    v.into_iter().flat_map(i64::to_le_bytes).collect()
}

#[test]
fn npy_shards_with_two_parts() {
    let d = Dir::new("npy2");
    d.write(
        "000.image.npy",
        &npy("<f4", &[3, 2, 2], &f32s((0..12).map(|x| x as f32))),
    );
    d.write("000.label.npy", &npy("<i8", &[3], &i64s([10, 11, 12])));
    d.write(
        "001.image.npy",
        &npy("<f4", &[2, 2, 2], &f32s((100..108).map(|x| x as f32))),
    );
    d.write("001.label.npy", &npy("<i8", &[2], &i64s([20, 21])));
    d.write("README.txt", b"ignored");
    let ds = Dataset::open(&d.0).unwrap();
    assert_eq!(ds.parts(), ["image", "label"]);
    assert_eq!(ds.shard_sizes(), [3, 2]);
    assert_eq!(ds.shard_names().collect::<Vec<_>>(), ["000", "001"]);
    assert_eq!(ds.len(), 5);
    assert_eq!(ds.max_part_bytes(), 16);
    let s = ds.read(1, 1).unwrap();
    assert_eq!(s.parts.len(), 2);
    assert_eq!(s.parts[0].dtype.name(), Some("float32"));
    assert_eq!(s.parts[0].shape, [2, 2]);
    assert_eq!(s.parts[0].data, f32s((104..108).map(|x| x as f32)));
    assert_eq!(s.parts[1].shape, Vec::<u64>::new());
    assert_eq!(s.parts[1].data, i64s([21]));
    assert_eq!(ds.read(0, 2).unwrap().parts[1].data, i64s([12]));
    assert!(matches!(
        ds.read(1, 2),
        Err(DatasetError::OutOfRange { shard: 1, item: 2 })
    ));
    assert!(ds.read(2, 0).is_err());
}

#[test]
fn single_file_npy_shards() {
    let d = Dir::new("npy1");
    d.write("b.npy", &npy("|u1", &[2, 3], b"abcdef"));
    d.write("a.npy", &npy("|u1", &[1, 3], b"xyz"));
    let ds = Dataset::open(&d.0).unwrap();
    assert_eq!(ds.parts(), [""]);
    assert_eq!(ds.shard_sizes(), [1, 2], "shards in name order");
    assert_eq!(ds.read(1, 1).unwrap().parts[0].data, b"def");
}

fn tar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn webdataset_tar_shards() {
    let d = Dir::new("tar");
    let img = |k: i64| npy("<f4", &[2, 3], &f32s((0..6).map(|x| (x + 10 * k) as f32)));
    d.write(
        "shard-000.tar",
        &tar(&[
            ("s/k0.image.npy", img(0)),
            ("s/k0.cls", b"7".to_vec()),
            ("s/k1.image.npy", img(1)),
            ("s/k1.cls", b"42".to_vec()),
        ]),
    );
    d.write(
        "shard-001.tar",
        &tar(&[("s/k2.image.npy", img(2)), ("s/k2.cls", b"3".to_vec())]),
    );
    let ds = Dataset::open(&d.0).unwrap();
    assert_eq!(ds.parts(), ["image.npy", "cls"]);
    assert_eq!(ds.shard_sizes(), [2, 1]);
    assert_eq!(ds.max_part_bytes(), 24);
    let s = ds.read(0, 1).unwrap();
    assert_eq!(s.parts[0].dtype.name(), Some("float32"));
    assert_eq!(s.parts[0].shape, [2, 3]);
    assert_eq!(s.parts[0].data, f32s((10..16).map(|x| x as f32)));
    assert_eq!(s.parts[1].dtype, DType::U8);
    assert_eq!(
        (s.parts[1].shape.clone(), s.parts[1].data.clone()),
        (vec![2], b"42".to_vec())
    );
    assert_eq!(ds.read(1, 0).unwrap().parts[1].data, b"3");
}

#[test]
fn inconsistent_datasets_say_where() {
    let err = |d: &Dir| Dataset::open(&d.0).unwrap_err().to_string();

    let d = Dir::new("empty");
    assert!(err(&d).contains("no shards"), "{}", err(&d));

    let d = Dir::new("mixed");
    d.write("a.npy", &npy("|u1", &[1], b"x"));
    d.write("b.tar", &tar(&[("k.cls", b"1".to_vec())]));
    assert!(err(&d).contains("both .npy and .tar"));

    let d = Dir::new("parts");
    d.write("0.x.npy", &npy("|u1", &[1], b"x"));
    d.write("0.y.npy", &npy("|u1", &[1], b"y"));
    d.write("1.x.npy", &npy("|u1", &[1], b"x"));
    assert!(
        err(&d).contains("shard 1: has parts [\"x\"]"),
        "{}",
        err(&d)
    );

    let d = Dir::new("items");
    d.write("0.x.npy", &npy("|u1", &[2], b"xx"));
    d.write("0.y.npy", &npy("|u1", &[1], b"y"));
    assert!(
        err(&d).contains("1 items, the shard's first part has 2"),
        "{}",
        err(&d)
    );

    let d = Dir::new("dtype");
    d.write("0.npy", &npy("|u1", &[1], b"x"));
    d.write("1.npy", &npy("<i8", &[1], &i64s([1])));
    assert!(
        err(&d).contains("dtype int64, the first shard's is uint8"),
        "{}",
        err(&d)
    );

    let d = Dir::new("short");
    d.write("0.npy", &npy("<f4", &[4], b"abc"));
    assert!(err(&d).contains("shorter than"), "{}", err(&d));

    let d = Dir::new("badnpy");
    d.write("0.npy", b"not numpy at all");
    assert!(err(&d).contains("0.npy: not a .npy file"), "{}", err(&d));

    let d = Dir::new("tarparts");
    d.write(
        "0.tar",
        &tar(&[
            ("a.x", b"1".to_vec()),
            ("a.y", b"2".to_vec()),
            ("b.x", b"3".to_vec()),
        ]),
    );
    assert!(err(&d).contains("sample b"), "{}", err(&d));

    let d = Dir::new("tardup");
    d.write(
        "0.tar",
        &tar(&[("a.x", b"1".to_vec()), ("a.x", b"2".to_vec())]),
    );
    assert!(err(&d).contains("second member"), "{}", err(&d));
}

//! A dataset of shards, indexed once when opened and read by `(shard, item)`.
//!
//! Two layouts, chosen by what the directory holds:
//!
//! - **`.npy` shards**: each shard is one `.npy` file, or several sharing a stem: `000.npy`, or
//!   `000.image.npy` with `000.label.npy`. A shard's items lie along the first axis; a shard of
//!   several files has one part per file (sorted by name, e.g. `image`, `label`), all with the
//!   same number of items.
//! - **WebDataset tar shards** (`*.tar`): members named `KEY.EXT` (the key is the name up to the
//!   first dot of its last path component); consecutive members with one key are one sample,
//!   one part per extension. A `.npy` member is a typed tensor (its whole array); any other
//!   member is its bytes (`uint8`, one dimension).
//!
//! Every sample of a dataset has the same parts (names, and for `.npy` parts the dtype); what
//! differs is reported with the shard and the sample, when the dataset is opened.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use gdrx_wire::DType;

use crate::npy::{NpyError, NpyHeader};

/// Why a dataset cannot be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A `.npy` file or member is not usable.
    #[error("{path}: {source}")]
    Npy {
        /// The file (and member).
        path: String,
        /// What is wrong.
        #[source]
        source: NpyError,
    },
    /// The directory holds no shards.
    #[error("{0}: no shards (a dataset directory holds *.npy files or WebDataset *.tar files)")]
    Empty(PathBuf),
    /// Shards or samples that do not agree.
    #[error("{path}: {why}")]
    Inconsistent {
        /// Where.
        path: String,
        /// What differs.
        why: String,
    },
    /// A (shard, item) outside the dataset.
    #[error("shard {shard} item {item} is not in the dataset")]
    OutOfRange {
        /// The shard.
        shard: u32,
        /// The item.
        item: u64,
    },
}

type Result<T, E = DatasetError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One part of a sample as read: a tensor's dtype, shape and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The element type.
    pub dtype: DType,
    /// The shape.
    pub shape: Vec<u64>,
    /// The bytes (C order).
    pub data: Vec<u8>,
}

/// One sample: its parts, in the dataset's part order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The parts.
    pub parts: Vec<Part>,
}

/// Where one part of one item lies.
#[derive(Debug, Clone)]
struct Extent {
    offset: u64,
    len: u64,
    dtype: DType,
    shape: Vec<u64>,
}

#[derive(Debug)]
enum Layout {
    /// One file per part; items are strided along the first axis.
    Npy { files: Vec<(File, NpyHeader)> },
    /// One tar file; each item has its extents.
    Tar { file: File, items: Vec<Vec<Extent>> },
}

#[derive(Debug)]
struct Shard {
    name: String,
    items: u64,
    layout: Layout,
}

/// A dataset of shards; see the [module docs](self). `Sync`: reads are positioned (`pread`).
#[derive(Debug)]
pub struct Dataset {
    root: PathBuf,
    parts: Vec<String>,
    shards: Vec<Shard>,
}

impl Dataset {
    /// Opens and indexes the dataset in `dir`.
    ///
    /// # Errors
    /// [`DatasetError`]: unreadable files, bad `.npy` headers, shards that disagree, no shards.
    pub fn open(dir: impl AsRef<Path>) -> Result<Dataset> {
        let root = dir.as_ref().to_owned();
        let mut npy: BTreeMap<String, Vec<(String, PathBuf)>> = BTreeMap::new();
        let mut tars = Vec::new();
        for entry in std::fs::read_dir(&root).map_err(io(&root))? {
            let path = entry.map_err(io(&root))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if let Some(stem) = name.strip_suffix(".npy") {
                let (shard, part) = stem.split_once('.').unwrap_or((stem, ""));
                npy.entry(shard.to_owned())
                    .or_default()
                    .push((part.to_owned(), path));
            } else if name.ends_with(".tar") {
                tars.push(path);
            }
        }
        match (npy.is_empty(), tars.is_empty()) {
            (true, true) => Err(DatasetError::Empty(root)),
            (false, false) => Err(DatasetError::Inconsistent {
                path: root.display().to_string(),
                why: "holds both .npy and .tar shards: keep one layout per directory".into(),
            }),
            (false, true) => Self::open_npy(root, npy),
            (true, false) => {
                tars.sort();
                Self::open_tar(root, tars)
            }
        }
    }

    fn open_npy(root: PathBuf, groups: BTreeMap<String, Vec<(String, PathBuf)>>) -> Result<Self> {
        let mut parts: Option<Vec<String>> = None;
        let mut dtypes: Vec<DType> = Vec::new();
        let mut shards = Vec::new();
        for (name, mut files) in groups {
            files.sort();
            let names: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
            match &parts {
                None => parts = Some(names.clone()),
                Some(p) if *p != names => {
                    return Err(DatasetError::Inconsistent {
                        path: format!("shard {name}"),
                        why: format!("has parts {names:?}, the first shard has {p:?}"),
                    })
                }
                Some(_) => {}
            }
            let mut opened = Vec::new();
            let mut items = None;
            for (i, (_, path)) in files.into_iter().enumerate() {
                let file = File::open(&path).map_err(io(&path))?;
                let h = NpyHeader::read(&mut BufReader::new(&file)).map_err(|source| {
                    DatasetError::Npy {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                if h.shape.is_empty() {
                    return Err(DatasetError::Inconsistent {
                        path: path.display().to_string(),
                        why: "a 0-d array: a shard's items lie along its first axis".into(),
                    });
                }
                let len = file.metadata().map_err(io(&path))?.len();
                if len < h.data_offset + h.items() * h.item_bytes() {
                    return Err(DatasetError::Inconsistent {
                        path: path.display().to_string(),
                        why: format!(
                            "{len} bytes, shorter than its header's shape {:?} needs",
                            h.shape
                        ),
                    });
                }
                match items {
                    None => items = Some(h.items()),
                    Some(n) if n != h.items() => {
                        return Err(DatasetError::Inconsistent {
                            path: path.display().to_string(),
                            why: format!("{} items, the shard's first part has {n}", h.items()),
                        })
                    }
                    Some(_) => {}
                }
                match dtypes.get(i) {
                    None => dtypes.push(h.dtype),
                    Some(d) if *d != h.dtype => {
                        return Err(DatasetError::Inconsistent {
                            path: path.display().to_string(),
                            why: format!(
                                "dtype {}, the first shard's is {}",
                                h.dtype.name().unwrap_or("?"),
                                d.name().unwrap_or("?")
                            ),
                        })
                    }
                    Some(_) => {}
                }
                opened.push((file, h));
            }
            shards.push(Shard {
                name,
                items: items.unwrap_or(0),
                layout: Layout::Npy { files: opened },
            });
        }
        Ok(Dataset {
            root,
            parts: parts.unwrap_or_default(),
            shards,
        })
    }

    fn open_tar(root: PathBuf, tars: Vec<PathBuf>) -> Result<Self> {
        let mut parts: Option<Vec<String>> = None;
        let mut shards = Vec::new();
        for path in tars {
            let name = path
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let file = File::open(&path).map_err(io(&path))?;
            let mut archive =
                tar::Archive::new(BufReader::new(file.try_clone().map_err(io(&path))?));
            let mut items: Vec<Vec<Extent>> = Vec::new();
            let mut keys: Vec<String> = Vec::new();
            let mut exts: Vec<String> = Vec::new();
            let flush = |key: &str, exts: &mut Vec<String>, parts: &mut Option<Vec<String>>| {
                let names = std::mem::take(exts);
                match parts {
                    None => *parts = Some(names),
                    Some(p) if *p != names => {
                        return Err(DatasetError::Inconsistent {
                            path: format!("{} sample {key}", path.display()),
                            why: format!("has parts {names:?}, the first sample has {p:?}"),
                        })
                    }
                    Some(_) => {}
                }
                Ok(())
            };
            for entry in archive.entries().map_err(io(&path))? {
                let mut entry = entry.map_err(io(&path))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let member = entry
                    .path()
                    .map_err(io(&path))?
                    .to_string_lossy()
                    .into_owned();
                let base = member.rsplit('/').next().unwrap_or(&member);
                let Some((key_tail, ext)) = base.split_once('.') else {
                    return Err(DatasetError::Inconsistent {
                        path: format!("{} member {member}", path.display()),
                        why: "has no extension: WebDataset members are KEY.EXT".into(),
                    });
                };
                let key = format!("{}{key_tail}", &member[..member.len() - base.len()]);
                let offset = entry.raw_file_position();
                let size = entry.size();
                let extent = if ext.ends_with("npy") {
                    let h = NpyHeader::read(&mut entry).map_err(|source| DatasetError::Npy {
                        path: format!("{} member {member}", path.display()),
                        source,
                    })?;
                    let bytes = h.shape.iter().product::<u64>() * h.dtype.itemsize();
                    if h.data_offset + bytes > size {
                        return Err(DatasetError::Inconsistent {
                            path: format!("{} member {member}", path.display()),
                            why: "shorter than its .npy header's shape needs".into(),
                        });
                    }
                    Extent {
                        offset: offset + h.data_offset,
                        len: bytes,
                        dtype: h.dtype,
                        shape: h.shape,
                    }
                } else {
                    Extent {
                        offset,
                        len: size,
                        dtype: DType::U8,
                        shape: vec![size],
                    }
                };
                if keys.last() != Some(&key) {
                    if let Some(prev) = keys.last().cloned() {
                        flush(&prev, &mut exts, &mut parts)?;
                    }
                    keys.push(key);
                    items.push(Vec::new());
                } else if exts.iter().any(|e| e == ext) {
                    return Err(DatasetError::Inconsistent {
                        path: format!("{} member {member}", path.display()),
                        why: "a second member with this key and extension".into(),
                    });
                }
                exts.push(ext.to_owned());
                items.last_mut().expect("pushed").push(extent);
            }
            if let Some(prev) = keys.last().cloned() {
                flush(&prev, &mut exts, &mut parts)?;
            }
            shards.push(Shard {
                name,
                items: items.len() as u64,
                layout: Layout::Tar { file, items },
            });
        }
        Ok(Dataset {
            root,
            parts: parts.unwrap_or_default(),
            shards,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The part names of every sample (`.npy` file parts or tar extensions; `[""]` for
    /// single-file `.npy` shards).
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// Samples per shard, in shard order (the plan's input).
    pub fn shard_sizes(&self) -> Vec<u64> {
        self.shards.iter().map(|s| s.items).collect()
    }

    /// Shard names (file stems), in shard order.
    pub fn shard_names(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|s| s.name.as_str())
    }

    /// The largest part of any sample, in bytes (a feeder's largest message is this plus the
    /// 64-byte sample header).
    pub fn max_part_bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| match &s.layout {
                Layout::Npy { files } => files
                    .iter()
                    .map(|(_, h)| h.item_bytes())
                    .collect::<Vec<u64>>(),
                Layout::Tar { items, .. } => {
                    items.iter().flatten().map(|e| e.len).collect::<Vec<u64>>()
                }
            })
            .max()
            .unwrap_or(0)
    }

    /// Samples in the dataset.
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.items).sum()
    }

    /// Whether the dataset has no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads item `item` of shard `shard`.
    ///
    /// # Errors
    /// [`DatasetError::OutOfRange`]; a failed read.
    pub fn read(&self, shard: u32, item: u64) -> Result<Sample> {
        let s = self
            .shards
            .get(shard as usize)
            .filter(|s| item < s.items)
            .ok_or(DatasetError::OutOfRange { shard, item })?;
        let read = |file: &File, e: &Extent| -> Result<Part> {
            let mut data = vec![0u8; e.len as usize];
            file.read_exact_at(&mut data, e.offset)
                .map_err(io(&self.root))?;
            Ok(Part {
                dtype: e.dtype,
                shape: e.shape.clone(),
                data,
            })
        };
        let parts = match &s.layout {
            Layout::Npy { files } => files
                .iter()
                .map(|(f, h)| {
                    let e = Extent {
                        offset: h.data_offset + item * h.item_bytes(),
                        len: h.item_bytes(),
                        dtype: h.dtype,
                        shape: h.shape[1..].to_vec(),
                    };
                    read(f, &e)
                })
                .collect::<Result<Vec<_>>>()?,
            Layout::Tar { file, items } => items[item as usize]
                .iter()
                .map(|e| read(file, e))
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(Sample { parts })
    }
}

#[cfg(test)]
mod tests;

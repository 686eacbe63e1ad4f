//! State every instance of the process shares: key-value data with compare-and-swap, and
//! message queues. Both are scoped by plugin name, so two configured plugins never see each
//! other's keys, while all instances of one plugin — across worker threads and across hot
//! reloads of its module — share them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, Weak};

use bytes::Bytes;

use super::pool::Slot;

/// Caps that keep a plugin from using shared state as an unbounded heap.
pub const MAX_KEYS_PER_SCOPE: usize = 100_000;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_QUEUE_ITEMS: usize = 10_000;

/// Per scope (plugin name): key → (value, CAS token).
type Data = HashMap<String, HashMap<Bytes, (Bytes, u32)>>;

#[derive(Default)]
pub struct SharedState {
    data: Mutex<Data>,
    queues: Mutex<Queues>,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Queues {
    next_id: u32,
    by_name: HashMap<(String, Bytes), u32>,
    by_id: HashMap<u32, Queue>,
}

struct Queue {
    items: VecDeque<Bytes>,
    /// The instance that registered the queue, told when an item arrives.
    owner: Weak<Slot>,
    root_context: u32,
}

/// Why a shared-data write was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    TooLarge,
}

impl SharedState {
    /// The value and its CAS token, or `None`.
    pub fn get(&self, scope: &str, key: &[u8]) -> Option<(Bytes, u32)> {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        data.get(scope)?.get(key).cloned()
    }

    /// Stores `value` if `cas` is 0 or still the key's token; a new token is returned. An empty
    /// value with a matching non-zero token removes the key (and returns 0).
    pub fn set(&self, scope: &str, key: &[u8], value: &[u8], cas: u32) -> Result<u32, SetError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(SetError::TooLarge);
        }
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let map = data.entry(scope.to_string()).or_default();
        match map.get_mut(key) {
            Some((v, token)) => {
                if cas != 0 && cas != *token {
                    return Err(SetError::CasMismatch);
                }
                if value.is_empty() && cas != 0 {
                    // Portico's deletion: an empty value written with a token removes the key,
                    // so plugins can expire what they stored (other hosts keep it, empty).
                    map.remove(key);
                    return Ok(0);
                }
                *v = Bytes::copy_from_slice(value);
                // Never 0: 0 means "no CAS" to the guest.
                *token = token.wrapping_add(1).max(1);
                Ok(*token)
            }
            None => {
                if cas != 0 {
                    return Err(SetError::CasMismatch);
                }
                if map.len() >= MAX_KEYS_PER_SCOPE {
                    return Err(SetError::TooLarge);
                }
                map.insert(
                    Bytes::copy_from_slice(key),
                    (Bytes::copy_from_slice(value), 1),
                );
                Ok(1)
            }
        }
    }

    /// Registers (or re-registers, moving its owner) the queue `name` of `scope`.
    pub fn register_queue(
        &self,
        scope: &str,
        name: &[u8],
        owner: Weak<Slot>,
        root_context: u32,
    ) -> u32 {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let key = (scope.to_string(), Bytes::copy_from_slice(name));
        if let Some(&id) = q.by_name.get(&key) {
            if let Some(queue) = q.by_id.get_mut(&id) {
                queue.owner = owner;
                queue.root_context = root_context;
            }
            return id;
        }
        q.next_id += 1;
        let id = q.next_id;
        q.by_name.insert(key, id);
        q.by_id.insert(
            id,
            Queue {
                items: VecDeque::new(),
                owner,
                root_context,
            },
        );
        id
    }

    pub fn resolve_queue(&self, scope: &str, name: &[u8]) -> Option<u32> {
        let q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        q.by_name
            .get(&(scope.to_string(), Bytes::copy_from_slice(name)))
            .copied()
    }

    /// Appends an item; returns whom to tell, or `None` if the queue does not exist. A full
    /// queue drops its oldest item.
    pub fn enqueue(&self, id: u32, value: &[u8]) -> Option<(Weak<Slot>, u32)> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = q.by_id.get_mut(&id)?;
        if queue.items.len() >= MAX_QUEUE_ITEMS {
            queue.items.pop_front();
        }
        queue.items.push_back(Bytes::copy_from_slice(value));
        Some((queue.owner.clone(), queue.root_context))
    }

    /// `Ok(None)` when empty, `Err(())` when there is no such queue.
    pub fn dequeue(&self, id: u32) -> Result<Option<Bytes>, ()> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = q.by_id.get_mut(&id).ok_or(())?;
        Ok(queue.items.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_follows_the_token() {
        let s = SharedState::default();
        assert_eq!(s.get("p", b"k"), None);
        assert_eq!(s.set("p", b"k", b"1", 7), Err(SetError::CasMismatch));
        let t1 = s.set("p", b"k", b"1", 0).unwrap();
        assert_eq!(s.get("p", b"k"), Some((Bytes::from_static(b"1"), t1)));
        let t2 = s.set("p", b"k", b"2", t1).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(s.set("p", b"k", b"3", t1), Err(SetError::CasMismatch));
        assert_eq!(s.get("other", b"k"), None, "scopes are separate");
        assert_eq!(s.set("p", b"k", b"", t1), Err(SetError::CasMismatch));
        assert_eq!(
            s.set("p", b"k", b"", t2),
            Ok(0),
            "empty with a token deletes"
        );
        assert_eq!(s.get("p", b"k"), None);
        let t = s.set("p", b"k", b"", 0).unwrap();
        assert_eq!(
            s.get("p", b"k"),
            Some((Bytes::new(), t)),
            "empty without a token stores"
        );
        assert_eq!(
            s.set("p", b"big", &vec![0; MAX_VALUE_BYTES + 1], 0),
            Err(SetError::TooLarge)
        );
    }

    #[test]
    fn queues_are_fifo_and_scoped() {
        let s = SharedState::default();
        let id = s.register_queue("p", b"events", Weak::new(), 1);
        assert_eq!(s.register_queue("p", b"events", Weak::new(), 1), id);
        assert_eq!(s.resolve_queue("p", b"events"), Some(id));
        assert_eq!(s.resolve_queue("q", b"events"), None);
        assert!(s.enqueue(id, b"a").is_some());
        assert!(s.enqueue(id, b"b").is_some());
        assert_eq!(s.dequeue(id), Ok(Some(Bytes::from_static(b"a"))));
        assert_eq!(s.dequeue(id), Ok(Some(Bytes::from_static(b"b"))));
        assert_eq!(s.dequeue(id), Ok(None));
        assert_eq!(s.dequeue(id + 1), Err(()));
        assert!(s.enqueue(id + 1, b"x").is_none());
    }
}

//! State every instance of the process shares: key-value data with compare-and-swap, and
//! message queues. Both are scoped by plugin name, so two configured plugins never see each
//! other's keys, while all instances of one plugin — across worker threads and across hot
//! reloads of its module — share them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, Weak};

use bytes::Bytes;

use super::pool::Slot;

/// Caps that keep a plugin from using shared state as an unbounded heap: per plugin, its keys
/// and their bytes (keys and values) and its queues; per queue, its items and their bytes (a
/// full queue drops its oldest items).
pub const MAX_KEYS_PER_SCOPE: usize = 100_000;
pub const MAX_SCOPE_BYTES: usize = 64 << 20;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_QUEUES_PER_SCOPE: usize = 1024;
pub const MAX_QUEUE_ITEMS: usize = 10_000;
pub const MAX_QUEUE_BYTES: usize = 16 << 20;

/// Per scope (plugin name).
type Data = HashMap<String, Scope>;

#[derive(Default)]
struct Scope {
    /// key → (value, CAS token).
    map: HashMap<Bytes, (Bytes, u32)>,
    /// The keys' and values' bytes.
    bytes: usize,
    /// The last CAS token handed out in this scope: every write takes the next, so a token is
    /// not reused for 2³² writes, even by a key removed and written again (ABA).
    clock: u32,
}

impl Scope {
    /// The next CAS token (never 0, which means "no CAS" to the guest).
    fn tick(&mut self) -> u32 {
        self.clock = self.clock.wrapping_add(1).max(1);
        self.clock
    }
}

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
    /// The items' bytes.
    bytes: usize,
    /// The instances that registered the queue, the latest last, with their root contexts:
    /// the latest one still alive is told when an item arrives. Earlier ones are kept so that
    /// a registration by an instance that goes away (a reload's canary, when the reload then
    /// fails) does not leave the queue without anyone to tell.
    owners: Vec<(Weak<Slot>, u32)>,
}

/// Registrations a queue remembers (one per live instance is all it needs).
const MAX_QUEUE_OWNERS: usize = 64;

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
        data.get(scope)?.map.get(key).cloned()
    }

    /// Stores `value` if `cas` is 0 or still the key's token; a new token is returned. An empty
    /// value with a matching non-zero token removes the key (and returns 0).
    pub fn set(&self, scope: &str, key: &[u8], value: &[u8], cas: u32) -> Result<u32, SetError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(SetError::TooLarge);
        }
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let scope = data.entry(scope.to_string()).or_default();
        match scope.map.get_mut(key) {
            Some((v, token)) => {
                if cas != 0 && cas != *token {
                    return Err(SetError::CasMismatch);
                }
                if value.is_empty() && cas != 0 {
                    // Portico's deletion: an empty value written with a token removes the key,
                    // so plugins can expire what they stored (other hosts keep it, empty).
                    scope.bytes -= key.len() + v.len();
                    scope.map.remove(key);
                    return Ok(0);
                }
                let bytes = scope.bytes - v.len() + value.len();
                if bytes > MAX_SCOPE_BYTES {
                    return Err(SetError::TooLarge);
                }
                *v = Bytes::copy_from_slice(value);
                // `tick` by hand: `token` borrows the map, this only the clock.
                scope.clock = scope.clock.wrapping_add(1).max(1);
                *token = scope.clock;
                scope.bytes = bytes;
                Ok(scope.clock)
            }
            None => {
                if cas != 0 {
                    return Err(SetError::CasMismatch);
                }
                let bytes = scope.bytes + key.len() + value.len();
                if scope.map.len() >= MAX_KEYS_PER_SCOPE || bytes > MAX_SCOPE_BYTES {
                    return Err(SetError::TooLarge);
                }
                let token = scope.tick();
                scope.map.insert(
                    Bytes::copy_from_slice(key),
                    (Bytes::copy_from_slice(value), token),
                );
                scope.bytes = bytes;
                Ok(token)
            }
        }
    }

    /// Registers (or re-registers, making `owner` the one told) the queue `name` of `scope`;
    /// `None` when the scope already has [`MAX_QUEUES_PER_SCOPE`] queues.
    pub fn register_queue(
        &self,
        scope: &str,
        name: &[u8],
        owner: Weak<Slot>,
        root_context: u32,
    ) -> Option<u32> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let key = (scope.to_string(), Bytes::copy_from_slice(name));
        if let Some(&id) = q.by_name.get(&key) {
            if let Some(queue) = q.by_id.get_mut(&id) {
                queue
                    .owners
                    .retain(|(o, _)| o.strong_count() > 0 && !o.ptr_eq(&owner));
                if queue.owners.len() >= MAX_QUEUE_OWNERS {
                    queue.owners.remove(0);
                }
                queue.owners.push((owner, root_context));
            }
            return Some(id);
        }
        if q.by_name.keys().filter(|(s, _)| s == scope).count() >= MAX_QUEUES_PER_SCOPE {
            return None;
        }
        q.next_id += 1;
        let id = q.next_id;
        q.by_name.insert(key, id);
        q.by_id.insert(
            id,
            Queue {
                items: VecDeque::new(),
                bytes: 0,
                owners: vec![(owner, root_context)],
            },
        );
        Some(id)
    }

    pub fn resolve_queue(&self, scope: &str, name: &[u8]) -> Option<u32> {
        let q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        q.by_name
            .get(&(scope.to_string(), Bytes::copy_from_slice(name)))
            .copied()
    }

    /// Appends an item; returns whom to tell, or `None` if the queue does not exist. A full
    /// queue (by items or bytes) drops its oldest items.
    pub fn enqueue(&self, id: u32, value: &[u8]) -> Option<(Weak<Slot>, u32)> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = q.by_id.get_mut(&id)?;
        while queue.items.len() >= MAX_QUEUE_ITEMS
            || (!queue.items.is_empty() && queue.bytes + value.len() > MAX_QUEUE_BYTES)
        {
            let dropped = queue.items.pop_front().map_or(0, |b| b.len());
            queue.bytes -= dropped;
        }
        queue.bytes += value.len();
        queue.items.push_back(Bytes::copy_from_slice(value));
        let (owner, root) = queue
            .owners
            .iter()
            .rev()
            .find(|(o, _)| o.strong_count() > 0)
            .or(queue.owners.last())?;
        Some((owner.clone(), *root))
    }

    /// `Ok(None)` when empty, `Err(())` when there is no such queue.
    pub fn dequeue(&self, id: u32) -> Result<Option<Bytes>, ()> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = q.by_id.get_mut(&id).ok_or(())?;
        let item = queue.items.pop_front();
        queue.bytes -= item.as_ref().map_or(0, |b| b.len());
        Ok(item)
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
        // A key deleted and written again never gets a token it had (no ABA).
        assert!(![t1, t2].contains(&t), "{t} reused");
        assert_eq!(s.set("p", b"k", b"4", t1), Err(SetError::CasMismatch));
        assert_eq!(
            s.set("p", b"big", &vec![0; MAX_VALUE_BYTES + 1], 0),
            Err(SetError::TooLarge)
        );
    }

    #[test]
    fn a_plugin_has_a_byte_budget_for_its_shared_data() {
        let s = SharedState::default();
        let value = vec![0u8; MAX_VALUE_BYTES];
        let fit = MAX_SCOPE_BYTES / (MAX_VALUE_BYTES + 8);
        for i in 0..fit {
            s.set("p", format!("k{i:07}").as_bytes(), &value, 0)
                .unwrap();
        }
        assert_eq!(s.set("p", b"one-more", &value, 0), Err(SetError::TooLarge));
        // Rewriting a value within the budget is fine; other plugins have budgets of their own.
        let (_, token) = s.get("p", b"k0000000").unwrap();
        let token = s.set("p", b"k0000000", &value, token).expect("fits");
        assert!(s.set("q", b"one-more", &value, 0).is_ok());
        // Deleting gives the bytes back.
        assert_eq!(s.set("p", b"k0000000", b"", token), Ok(0));
        assert!(s.set("p", b"one-more", &value, 0).is_ok());
    }

    #[test]
    fn queues_are_capped_by_count_items_and_bytes() {
        let s = SharedState::default();
        for i in 0..MAX_QUEUES_PER_SCOPE {
            assert!(
                s.register_queue("p", format!("q{i}").as_bytes(), Weak::new(), 1)
                    .is_some()
            );
        }
        assert_eq!(s.register_queue("p", b"one-more", Weak::new(), 1), None);
        assert_eq!(s.register_queue("p", b"q0", Weak::new(), 1), Some(1));
        assert!(s.register_queue("other", b"q0", Weak::new(), 1).is_some());

        let id = s.resolve_queue("p", b"q1").unwrap();
        let big = vec![7u8; MAX_VALUE_BYTES];
        let per_queue = MAX_QUEUE_BYTES / MAX_VALUE_BYTES;
        for i in 0..per_queue + 3 {
            let mut item = big.clone();
            item[0] = i as u8;
            s.enqueue(id, &item).unwrap();
        }
        // The oldest three went to make room.
        let mut n = 0;
        while let Ok(Some(item)) = s.dequeue(id) {
            assert_eq!(item[0] as usize, n + 3);
            n += 1;
        }
        assert_eq!(n, per_queue);
    }

    #[test]
    fn queues_are_fifo_and_scoped() {
        let s = SharedState::default();
        let id = s.register_queue("p", b"events", Weak::new(), 1).unwrap();
        assert_eq!(s.register_queue("p", b"events", Weak::new(), 1), Some(id));
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

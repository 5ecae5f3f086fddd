//! Heap blocks for the futures a worker boxes on every request, kept for the next request
//! instead of going back to the allocator.
//!
//! A connection's idle task holds only its read; the future that answers a request lives on
//! the heap while it runs (and the response's own state, about 3 KiB, in a second block), so
//! that thousands of idle connections stay small. glibc serves a block of a kilobyte or more
//! from its sorted bins, consolidating its fast bins first, so two boxes per request were
//! most of what `malloc` and `free` cost a 4 KiB range. A [`Recycler`] keeps freed blocks per
//! layout, at most [`KEEP`] of each, and hands them out again: no allocation per request once
//! a worker has served as many requests at once as it will.
#![allow(unsafe_code)] // the blocks are raw allocations: see each SAFETY comment

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Freed blocks kept per layout: past this many, one goes back to the allocator. At the
/// sizes boxed per request (under 4 KiB) that is at most a few hundred KiB per worker.
const KEEP: usize = 64;

/// One worker's free blocks, by layout (a handful of layouts: the futures boxed per request).
#[derive(Default)]
pub(super) struct Recycler {
    free: RefCell<Vec<(Layout, Vec<NonNull<u8>>)>>,
}

impl Recycler {
    /// `fut` in a block of this recycler: like `Box::pin(fut)`, with the block reused.
    pub(super) fn pin<F: Future>(&self, fut: F) -> Recycled<'_, F> {
        let layout = Layout::new::<F>();
        let block = if layout.size() == 0 {
            NonNull::<F>::dangling().cast::<u8>()
        } else {
            match self.take(layout) {
                Some(b) => b,
                None => {
                    // SAFETY: the layout's size is not zero.
                    let raw = unsafe { alloc::alloc(layout) };
                    NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout))
                }
            }
        };
        let ptr = block.cast::<F>();
        // SAFETY: `block` is valid for writes of `layout`, which is `F`'s, and properly
        // aligned for it (fresh from the allocator or freed by a `Recycled<F>` of the same
        // layout); nothing else refers to it.
        unsafe { ptr.as_ptr().write(fut) };
        Recycled {
            ptr,
            recycler: self,
            _owns: PhantomData,
        }
    }

    fn take(&self, layout: Layout) -> Option<NonNull<u8>> {
        let mut free = self.free.borrow_mut();
        free.iter_mut()
            .find(|(l, _)| *l == layout)
            .and_then(|(_, blocks)| blocks.pop())
    }

    /// Keeps `block` (of `layout`) for reuse, or frees it when [`KEEP`] are kept already.
    fn give(&self, layout: Layout, block: NonNull<u8>) {
        if layout.size() == 0 {
            return;
        }
        let mut free = self.free.borrow_mut();
        match free.iter_mut().find(|(l, _)| *l == layout) {
            None => free.push((layout, vec![block])),
            Some((_, blocks)) if blocks.len() < KEEP => blocks.push(block),
            // SAFETY: `block` was allocated with `layout` and is no longer used.
            Some(_) => unsafe { alloc::dealloc(block.as_ptr(), layout) },
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.borrow().iter().map(|(_, b)| b.len()).sum()
    }
}

impl Drop for Recycler {
    fn drop(&mut self) {
        for (layout, blocks) in self.free.get_mut().drain(..) {
            for block in blocks {
                // SAFETY: every kept block was allocated with its list's layout and is unused.
                unsafe { alloc::dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

/// A future pinned in a block of a [`Recycler`]; dropping it drops the future and gives the
/// block back.
pub(super) struct Recycled<'r, F> {
    ptr: NonNull<F>,
    recycler: &'r Recycler,
    /// This owns an `F` (for the drop check).
    _owns: PhantomData<F>,
}

impl<F: Future> Future for Recycled<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future stays at `ptr`, which this owns, until `drop` drops it in place:
        // it is never moved, so it may be pinned there.
        let fut = unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) };
        fut.poll(cx)
    }
}

impl<F> Drop for Recycled<'_, F> {
    fn drop(&mut self) {
        // SAFETY: `ptr` holds the `F` written by `Recycler::pin`, dropped only here, once.
        unsafe { self.ptr.as_ptr().drop_in_place() };
        self.recycler
            .give(Layout::new::<F>(), self.ptr.cast::<u8>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::task::Waker;

    /// A future that is pending once, then ready, and counts its drops.
    struct Step {
        polled: bool,
        drops: Rc<Cell<u32>>,
        payload: [u8; 300],
    }

    impl Future for Step {
        type Output = u8;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
            if self.polled {
                Poll::Ready(self.payload[299])
            } else {
                self.polled = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    impl Drop for Step {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    fn step(drops: &Rc<Cell<u32>>, last: u8) -> Step {
        let mut payload = [0u8; 300];
        payload[299] = last;
        Step {
            polled: false,
            drops: Rc::clone(drops),
            payload,
        }
    }

    #[test]
    fn blocks_are_reused_and_futures_dropped_once() {
        let r = Recycler::default();
        let drops = Rc::new(Cell::new(0));
        let mut cx = Context::from_waker(Waker::noop());
        let mut a = r.pin(step(&drops, 7));
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert_eq!(Pin::new(&mut a).poll(&mut cx), Poll::Ready(7));
        let at = a.ptr.cast::<u8>();
        drop(a);
        assert_eq!((drops.get(), r.kept()), (1, 1));
        // The next future of that layout gets the same block; one dropped unpolled too.
        let b = r.pin(step(&drops, 9));
        assert_eq!(b.ptr.cast::<u8>(), at);
        assert_eq!(r.kept(), 0);
        drop(b);
        assert_eq!((drops.get(), r.kept()), (2, 1));
    }

    #[test]
    fn at_most_keep_blocks_per_layout_are_kept() {
        let r = Recycler::default();
        let drops = Rc::new(Cell::new(0));
        let many: Vec<_> = (0..KEEP + 10)
            .map(|i| r.pin(step(&drops, i as u8)))
            .collect();
        drop(many);
        assert_eq!(drops.get(), (KEEP + 10) as u32);
        assert_eq!(r.kept(), KEEP);
        // Another layout has a list of its own.
        let small = r.pin(std::future::ready(1u64));
        drop(small);
        assert_eq!(r.kept(), KEEP + 1);
    }

    #[test]
    fn futures_borrowing_locals_run_in_a_runtime() {
        let r = Recycler::default();
        let text = String::from("borrowed");
        let n = crate::rt::start(async {
            let mut total = 0;
            for _ in 0..3 {
                let t = &text;
                total += r
                    .pin(async move {
                        crate::rt::yield_now().await;
                        t.len()
                    })
                    .await;
            }
            total
        })
        .unwrap();
        assert_eq!(n, 3 * text.len());
        assert_eq!(r.kept(), 1);
    }
}

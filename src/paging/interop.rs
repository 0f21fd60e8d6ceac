//! The `x86_64` crate's `Translate` trait for kmem's mapper, so code
//! written against `OffsetPageTable` (blog_os's `translate_addr`) runs
//! unchanged on it.

use x86_64::structures::paging::mapper::{MappedFrame, Translate, TranslateResult};
use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

use super::{LeafSize, Mapper, PhysMem};

impl<P: PhysMem> Translate for Mapper<P> {
    fn translate(&self, addr: VirtAddr) -> TranslateResult {
        let Ok(t) = Mapper::translate(self, addr) else {
            return TranslateResult::NotMapped;
        };
        let frame = match t.size {
            LeafSize::Size4KiB => MappedFrame::Size4KiB(PhysFrame::containing_address(t.frame)),
            LeafSize::Size2MiB => MappedFrame::Size2MiB(PhysFrame::containing_address(t.frame)),
            LeafSize::Size1GiB => MappedFrame::Size1GiB(PhysFrame::containing_address(t.frame)),
        };
        TranslateResult::Mapped {
            frame,
            offset: addr - t.page,
            flags: t.flags,
        }
    }
}

#pragma once

#include <ferry/version.hpp>

#include <atomic>

FERRY_NAMESPACE_BEGIN
namespace detail {

struct mpsc_node {
    std::atomic<mpsc_node*> next{nullptr};
};

/// An intrusive multi-producer single-consumer queue (D. Vyukov's design):
/// a push is one exchange and one store, never a lock and never an
/// allocation, since the element itself is the node. Producers are any
/// threads; pop belongs to one consumer thread.
class mpsc_queue {
public:
    mpsc_queue() noexcept : head_(&stub_), tail_(&stub_) {}
    mpsc_queue(const mpsc_queue&) = delete;
    mpsc_queue& operator=(const mpsc_queue&) = delete;

    void push(mpsc_node* n) noexcept {
        n->next.store(nullptr, std::memory_order_relaxed);
        // seq_cst so that a producer and a consumer about to sleep cannot both
        // miss each other (see ucx_backend::submit).
        mpsc_node* prev = head_.exchange(n, std::memory_order_seq_cst);
        prev->next.store(n, std::memory_order_release);
    }

    /// The oldest node, or null when the queue is empty or a push is half
    /// done (the consumer then simply tries again later).
    mpsc_node* pop() noexcept {
        mpsc_node* tail = tail_;
        mpsc_node* next = tail->next.load(std::memory_order_acquire);
        if (tail == &stub_) {
            if (!next) return nullptr;
            tail_ = next;
            tail = next;
            next = next->next.load(std::memory_order_acquire);
        }
        if (next) {
            tail_ = next;
            return tail;
        }
        if (tail != head_.load(std::memory_order_acquire)) return nullptr;
        push(&stub_);
        next = tail->next.load(std::memory_order_acquire);
        if (next) {
            tail_ = next;
            return tail;
        }
        return nullptr;
    }

    /// True when nothing has been pushed that pop has not returned. Consumer only.
    [[nodiscard]] bool empty() const noexcept {
        mpsc_node* head = head_.load(std::memory_order_seq_cst);
        return head == tail_ && head->next.load(std::memory_order_acquire) == nullptr;
    }

private:
    std::atomic<mpsc_node*> head_;
    mpsc_node* tail_;  // consumer only
    mpsc_node stub_;
};

}  // namespace detail
FERRY_NAMESPACE_END

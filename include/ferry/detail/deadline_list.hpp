#pragma once

#include <ferry/version.hpp>

#include <chrono>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Links that put an object on a deadline_list.
template <class T>
struct deadline_links {
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
    T* deadline_prev = nullptr;
    T* deadline_next = nullptr;
    bool deadline_linked = false;
};

/// The transfers in flight that have a deadline, for the thread that drives
/// the worker to expire. Intrusive and unordered: linking and unlinking are a
/// few stores and never allocate; a sweep visits every member, and there are
/// only as many members as transfers in flight with a deadline.
template <class T>
class deadline_list {
public:
    [[nodiscard]] bool empty() const noexcept { return head_ == nullptr; }

    void link(T& t) noexcept {
        if (t.deadline_linked) return;
        t.deadline_prev = nullptr;
        t.deadline_next = head_;
        if (head_) head_->deadline_prev = &t;
        head_ = &t;
        t.deadline_linked = true;
    }

    void unlink(T& t) noexcept {
        if (!t.deadline_linked) return;
        if (t.deadline_prev) t.deadline_prev->deadline_next = t.deadline_next;
        else head_ = t.deadline_next;
        if (t.deadline_next) t.deadline_next->deadline_prev = t.deadline_prev;
        t.deadline_prev = t.deadline_next = nullptr;
        t.deadline_linked = false;
    }

    /// Unlinks every member whose deadline is at or before `now` and calls
    /// on_expired(member) for it; returns the earliest deadline left
    /// (time_point::max() when none is).
    template <class F>
    std::chrono::steady_clock::time_point sweep(std::chrono::steady_clock::time_point now, F&& on_expired) noexcept {
        auto earliest = std::chrono::steady_clock::time_point::max();
        for (T* t = head_; t != nullptr;) {
            T* next = t->deadline_next;
            if (t->deadline <= now) {
                unlink(*t);
                on_expired(*t);
            } else if (t->deadline < earliest) {
                earliest = t->deadline;
            }
            t = next;
        }
        return earliest;
    }

private:
    T* head_ = nullptr;
};

}  // namespace detail
FERRY_NAMESPACE_END

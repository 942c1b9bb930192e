#pragma once

#include <ferry/version.hpp>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// The links that put a T on an intrusive_list<T, Tag>; a T derives from one
/// hook per list it can be on.
template <class T, class Tag>
struct list_hook {
    T* hook_prev = nullptr;
    T* hook_next = nullptr;
    bool hook_linked = false;
};

/// An unordered doubly linked list through objects that carry their own
/// links: linking and unlinking are a few stores and never allocate. For the
/// thread that drives the worker only.
template <class T, class Tag>
class intrusive_list {
    using hook = list_hook<T, Tag>;
    static hook& of(T& t) noexcept { return static_cast<hook&>(t); }

public:
    [[nodiscard]] bool empty() const noexcept { return head_ == nullptr; }

    /// Whether t is on this list (or on another list of the same Tag).
    [[nodiscard]] static bool contains(const T& t) noexcept { return static_cast<const hook&>(t).hook_linked; }

    void link(T& t) noexcept {
        hook& h = of(t);
        if (h.hook_linked) return;
        h.hook_prev = nullptr;
        h.hook_next = head_;
        if (head_) of(*head_).hook_prev = &t;
        head_ = &t;
        h.hook_linked = true;
    }

    void unlink(T& t) noexcept {
        hook& h = of(t);
        if (!h.hook_linked) return;
        if (h.hook_prev) of(*h.hook_prev).hook_next = h.hook_next;
        else head_ = h.hook_next;
        if (h.hook_next) of(*h.hook_next).hook_prev = h.hook_prev;
        h.hook_prev = h.hook_next = nullptr;
        h.hook_linked = false;
    }

    /// Calls f(member) for every member; f may unlink (or free) the member
    /// it is given, but no other.
    template <class F>
    void for_each(F&& f) noexcept {
        for (T* t = head_; t != nullptr;) {
            T* next = of(*t).hook_next;
            f(*t);
            t = next;
        }
    }

private:
    T* head_ = nullptr;
};

}  // namespace detail
FERRY_NAMESPACE_END

//! The speculation tree of one round, as SVG, drawn from [`crate::app::layout::plan`]: depth left
//! to right, the accepted path on the top row (it reads as the words it added, the bonus token at
//! its end), every verified node labelled with its token, pruned candidates collapsed into a "+n"
//! badge per node (click or Enter shows them; "show all candidates" draws every one). Edge weight
//! is the draft's confidence. A round that arrives while following generation is drawn in phases
//! (draft levels, pruning, verdict, words into the caption; no animation with
//! `prefers-reduced-motion`). Under the tree, one mark per round (its accepted length) picks the
//! round to show, as does the scrubber.
//!
//! Test hooks: `tree` (`data-round`, `data-pruned-total`, `data-verified`, `data-live`), nodes
//! `g.node` with `data-status` (a badge is a `g.node.badge` with `data-status="pruned"` and
//! `data-pruned`), `round-strip` (marks carry `data-index`, `data-accepted`), `follow-latest`,
//! `round-scrubber`, `show-pruned`.

use leptos::ev;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use super::{AppState, Status};
use crate::app::layout::{
    node_description, plan, pruned_owner, round_phase_times, token_label, PlanOptions, FONT_PX,
    PILL_H,
};
use crate::speculative::events::RoundEvent;
use crate::speculative::tree::NodeStatus;

fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Expanded => "expanded",
        NodeStatus::Pruned => "pruned",
        NodeStatus::Accepted => "accepted",
        NodeStatus::Rejected => "rejected",
        NodeStatus::Bonus => "bonus",
    }
}

/// Focus the first element matching `selector` (after a redraw replaced the focused one).
fn focus_selector(selector: String) {
    request_animation_frame(move || {
        let Some(el) = document().query_selector(&selector).ok().flatten() else {
            return;
        };
        if let Ok(f) = js_sys::Reflect::get(&el, &"focus".into()) {
            if let Some(f) = f.dyn_ref::<js_sys::Function>() {
                let _ = f.call0(&el);
            }
        }
    });
}

/// The SVG of one round. `live`: draw it in phases.
fn draw_round(
    st: AppState,
    round: &RoundEvent,
    width: f32,
    show_pruned: bool,
    expanded: RwSignal<(usize, Vec<usize>)>,
    live: bool,
) -> AnyView {
    let open: Vec<usize> = expanded.with_untracked(|(r, list)| {
        if *r == round.round {
            list.clone()
        } else {
            Vec::new()
        }
    });
    let p = plan(
        &round.nodes,
        &PlanOptions {
            width,
            show_pruned,
            expanded: open,
        },
    );
    let times = round_phase_times(&round.nodes);
    let nodes = &round.nodes;
    let mut edges = Vec::new();
    for &(a, b) in &p.edges {
        // Every edge joins placed nodes; skip rather than panic (a panic kills the page).
        let (Some(pa), Some(pb)) = (p.node(a), p.node(b)) else {
            continue;
        };
        let (x1, y1, x2, y2) = (pa.x + pa.w, pa.y, pb.x, pb.y);
        let mx = (x1 + x2) / 2.0;
        let n = &nodes[b];
        // Line weight: the draft's confidence in the child (the bonus token is the target's).
        let weight = if n.status == NodeStatus::Bonus {
            2.5
        } else {
            1.0 + 4.0 * n.prob.clamp(0.0, 1.0)
        };
        edges.push(view! {
            <path
                class=format!("edge {}", status_name(n.status))
                d=format!("M{x1:.1} {y1:.1} C{mx:.1} {y1:.1} {mx:.1} {y2:.1} {x2:.1} {y2:.1}")
                stroke-width=format!("{weight:.2}")
                data-confidence=format!("{:.3}", n.prob)
                style=format!("--d: {}", pb.column)
            ></path>
        });
    }
    // Nodes and badges, in focus order.
    let mut items: Vec<(usize, AnyView)> = Vec::new();
    for n in &p.nodes {
        let ev = &nodes[n.id];
        let status = status_name(ev.status);
        let root = ev.parent.is_none();
        let describe = node_description(ev, &n.text);
        let (d1, d2) = (describe.clone(), describe.clone());
        let top = n.y - PILL_H / 2.0;
        let ring = (ev.status == NodeStatus::Bonus).then(|| {
            view! {
                <rect class="ring" x=n.x - 3.0 y=top - 3.0 width=n.w + 6.0 height=PILL_H + 6.0 rx="8"></rect>
            }
        });
        items.push((
            n.seq,
            view! {
                <g
                    class=format!("node {status}{}", if root { " root" } else { "" })
                    data-status=status
                    data-depth=ev.depth
                    data-id=n.id
                    data-confidence=format!("{:.3}", ev.prob)
                    tabindex="0"
                    role="img"
                    aria-label=describe
                    style=format!("--d: {}", n.column)
                    on:mouseenter=move |_| st.hovered.set(Some(d1.clone()))
                    on:focus=move |_| st.hovered.set(Some(d2.clone()))
                    on:mouseleave=move |_| st.hovered.set(None)
                >
                    {ring}
                    <rect class="pill" x=n.x y=top width=n.w height=PILL_H rx="5"></rect>
                    <text x=n.x + n.w / 2.0 y=n.y dy="0.35em" text-anchor="middle" font-size=FONT_PX>
                        {n.label.clone()}
                    </text>
                </g>
            }
            .into_any(),
        ));
    }
    let owners = pruned_owner(nodes);
    let mut links = Vec::new();
    let mut ghosts = Vec::new();
    for b in &p.badges {
        let Some(owner) = p.node(b.owner) else {
            continue;
        };
        // A badge right of its node is joined like a child; one under its node by a short drop.
        let (x1, y1, x2, y2, d) = if b.beside {
            let (x1, y1, x2, y2) = (owner.x + owner.w, owner.y, b.x, b.y);
            let mx = (x1 + x2) / 2.0;
            (
                x1,
                y1,
                x2,
                y2,
                format!("M{x1:.1} {y1:.1} C{mx:.1} {y1:.1} {mx:.1} {y2:.1} {x2:.1} {y2:.1}"),
            )
        } else {
            let (x1, y1) = (owner.x + 10.0, owner.y + PILL_H / 2.0);
            let (x2, y2) = (b.x + 10.0, b.y - PILL_H / 2.0);
            (
                owner.x + owner.w,
                owner.y,
                b.x + b.w,
                b.y,
                format!("M{x1:.1} {y1:.1} L{x2:.1} {y2:.1}"),
            )
        };
        links.push(view! {
            <path class="edge badge-link" d=d style=format!("--d: {}", b.column)></path>
        });
        // While live: the candidates the draft proposed here, fanning out and fading as pruned.
        if live && !b.expanded {
            let k = b.count.min(6);
            let fan = (0..k)
                .map(|j| {
                    let dy = (j as f32 - (k as f32 - 1.0) / 2.0) * 6.0;
                    view! { <line x1=x1 y1=y1 x2=x2 + 10.0 y2=y2 + dy></line> }
                })
                .collect::<Vec<_>>();
            ghosts.push(view! { <g class="ghosts" style=format!("--d: {}", b.column)>{fan}</g> });
        }
        let owner_id = b.owner;
        let round_no = round.round;
        let toggle = move || {
            expanded.update(|(r, list)| {
                if *r != round_no {
                    *r = round_no;
                    list.clear();
                }
                if let Some(at) = list.iter().position(|&o| o == owner_id) {
                    list.remove(at);
                } else {
                    list.push(owner_id);
                }
            });
            focus_selector(format!(
                "[data-testid=tree] g.badge[data-owner='{owner_id}']"
            ));
        };
        // What the badge stands for: the candidates' tokens, best first.
        let mut cands: Vec<_> = nodes
            .iter()
            .enumerate()
            .filter(|&(i, n)| n.status == NodeStatus::Pruned && owners[i] == owner_id)
            .map(|(_, n)| n)
            .collect();
        cands.sort_by(|a, b| b.score.total_cmp(&a.score));
        let list = cands
            .iter()
            .take(12)
            .map(|n| format!("'{}' {:.2}", token_label(&n.text), n.prob))
            .collect::<Vec<_>>()
            .join(", ");
        let after = format!("'{}'", token_label(&owner.text));
        let label = if b.expanded {
            format!(
                "{} pruned candidates after {after}, shown; press Enter to fold them",
                b.count
            )
        } else {
            format!(
                "{} pruned candidates after {after}; press Enter to show them",
                b.count
            )
        };
        let detail = format!(
            "{} pruned after {after} (the draft's confidence): {list}{}",
            b.count,
            if cands.len() > 12 { ", …" } else { "" }
        );
        let (det1, det2) = (detail.clone(), detail);
        let top = b.y - PILL_H / 2.0;
        items.push((
            b.seq,
            view! {
                <g
                    class=format!("node badge{}", if b.expanded { " open" } else { "" })
                    data-status="pruned"
                    data-pruned=b.count
                    data-owner=b.owner
                    tabindex="0"
                    role="button"
                    aria-expanded=b.expanded.to_string()
                    aria-label=label
                    style=format!("--d: {}", b.column)
                    on:click=move |_| toggle()
                    on:keydown=move |e: ev::KeyboardEvent| {
                        if e.key() == "Enter" || e.key() == " " {
                            e.prevent_default();
                            toggle();
                        }
                    }
                    on:mouseenter=move |_| st.hovered.set(Some(det1.clone()))
                    on:focus=move |_| st.hovered.set(Some(det2.clone()))
                    on:mouseleave=move |_| st.hovered.set(None)
                >
                    <rect class="pill" x=b.x y=top width=b.w height=PILL_H rx="10"></rect>
                    <text x=b.x + b.w / 2.0 y=b.y dy="0.35em" text-anchor="middle">
                        {if b.expanded { "−".to_string() } else { format!("+{}", b.count) }}
                    </text>
                </g>
            }
            .into_any(),
        ));
    }
    items.sort_by_key(|(seq, _)| *seq);
    let items = items.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
    let verified = nodes.len() - p.pruned_total;
    let style = format!(
        "--step: {}ms; --prune-at: {}ms; --verify-at: {}ms; --path-step: {}ms",
        times.step_ms, times.prune_at_ms, times.verify_at_ms, times.path_step_ms
    );
    view! {
        <svg
            data-testid="tree"
            class=if live { "tree live" } else { "tree" }
            data-round=round.round
            data-pruned-total=p.pruned_total
            data-verified=verified
            data-live=live.to_string()
            width=format!("{:.0}", p.width)
            height=format!("{:.0}", p.height)
            viewBox=format!("0 0 {:.0} {:.0}", p.width, p.height)
            style=style
            role="group"
            aria-label=format!(
                "speculation tree of round {}: {} verified nodes, {} accepted, {} pruned candidates",
                round.round, verified, round.accepted, p.pruned_total
            )
        >
            <g class="edges">{links}{edges}</g>
            <g class="ghost-layer" aria-hidden="true">{ghosts}</g>
            <g class="nodes">{items}</g>
        </svg>
    }
    .into_any()
}

#[component]
pub fn TreeView() -> impl IntoView {
    let st = expect_context::<AppState>();
    let count = move || st.rounds.with(|r| r.len());
    let index = move || {
        let n = count();
        st.shown
            .get()
            .filter(|&i| i < n)
            .unwrap_or(n.saturating_sub(1))
    };
    // The panel's width: the tree is laid out to fit it.
    let panel: NodeRef<leptos::html::Div> = NodeRef::new();
    let width = RwSignal::new(640.0f32);
    let measure = move || {
        if let Some(el) = panel.get_untracked() {
            let w = el.client_width();
            if w > 0 && (w as f32 - width.get_untracked()).abs() >= 1.0 {
                width.set(w as f32);
            }
        }
    };
    Effect::new(move |_| {
        if panel.get().is_some() {
            measure();
        }
    });
    let _resize = window_event_listener(ev::resize, move |_| measure());
    let show_pruned = RwSignal::new(false);
    let expanded = RwSignal::new((usize::MAX, Vec::<usize>::new()));
    // The last round drawn live (run, round): redraws of it (expanding, resizing) are static.
    let animated = StoredValue::new((0u64, usize::MAX));
    let svg = move || {
        let i = index();
        let round = st.rounds.with(|r| r.get(i).cloned());
        let (width, show_pruned) = (width.get(), show_pruned.get());
        expanded.track();
        let Some(round) = round else {
            return view! { <svg data-testid="tree" class="tree empty" width="300" height="60" role="img" aria-label="no rounds yet"></svg> }
                .into_any();
        };
        let key = (st.run.get_untracked(), round.round);
        let following = st.shown.get().is_none();
        let live = following
            && st.status.get_untracked() == Status::Generating
            && animated.get_value() != key;
        if following {
            animated.set_value(key);
        }
        draw_round(st, &round, width, show_pruned, expanded, live)
    };
    let strip = move || {
        let current = index();
        st.rounds.with(|rounds| {
            rounds
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let words = r.emitted.len();
                    let label = format!(
                        "round {}: {} accepted{}",
                        r.round,
                        r.accepted,
                        if words > r.accepted { " + bonus" } else { "" }
                    );
                    view! {
                        <button
                            class=if i == current { "mark current" } else { "mark" }
                            data-index=i
                            data-round=r.round
                            data-accepted=r.accepted
                            aria-pressed=(i == current).to_string()
                            aria-label=label.clone()
                            title=label
                            on:click=move |_| st.shown.set(Some(i))
                        >
                            <span class="bar" style=format!("height: {}px", 3 + 3 * r.accepted.min(10))></span>
                            <span class="n">{r.accepted}</span>
                        </button>
                    }
                })
                .collect::<Vec<_>>()
        })
    };
    view! {
        <section class="tree-panel">
            <h2>"Speculation tree"</h2>
            <p class="legend">
                <span class="key accepted">"accepted"</span>
                <span class="key bonus">"bonus (target's own token)"</span>
                <span class="key rejected">"rejected"</span>
                <span class="key expanded">"verified, not reached"</span>
                <span class="key pruned">"pruned (+n: click to show)"</span>
                <span class="key weight">"line weight: draft confidence"</span>
                <label class="show-all">
                    <input
                        type="checkbox"
                        data-testid="show-pruned"
                        prop:checked=move || show_pruned.get()
                        on:change=move |e: ev::Event| show_pruned.set(event_target_checked(&e))
                    />
                    "show all candidates"
                </label>
            </p>
            <div class="tree-scroll" node_ref=panel>{svg}</div>
            <p class="tooltip" aria-live="polite">{move || st.hovered.get().unwrap_or_else(|| "Hover or focus a node for its token and the draft's confidence; the top row is the accepted path.".into())}</p>
            <div class="round-strip" data-testid="round-strip" role="group" aria-label="rounds (accepted tokens per round): pick one to show">
                <div class="marks">{strip}</div>
                <button
                    class="follow"
                    data-testid="follow-latest"
                    prop:disabled=move || st.shown.get().is_none()
                    on:click=move |_| st.shown.set(None)
                >
                    "follow latest"
                </button>
            </div>
            <label class="scrubber">
                {move || format!("round {} of {}", if count() == 0 { 0 } else { index() + 1 }, count())}
                <input
                    type="range"
                    data-testid="round-scrubber"
                    min="1"
                    max=move || count().max(1)
                    prop:value=move || (index() + 1).to_string()
                    prop:disabled=move || count() < 2
                    on:input=move |e: ev::Event| {
                        if let Ok(v) = event_target_value(&e).parse::<usize>() {
                            let n = count();
                            st.shown.set(if v >= n { None } else { Some(v.saturating_sub(1)) });
                        }
                    }
                />
            </label>
        </section>
    }
}

//! The THREAD algorithms of RFC 5256 §3, as pure functions from message data to the
//! response text (`(1 2)(3 (4)(5))`).

use std::collections::{BTreeMap, HashMap};

/// What threading needs to know about one message.
#[derive(Debug, Clone)]
pub struct ThreadInput {
    /// The number to print (sequence number or UID).
    pub number: u32,
    /// The sequence number (ties in date order are broken by it).
    pub seq: u32,
    /// Sent date (Date: header, else internal date), ms since the epoch.
    pub date_ms: i64,
    /// RFC 5256 §2.1 base subject, lowercased.
    pub base_subject: String,
    /// Whether the subject had reply or forward markers.
    pub is_reply: bool,
    /// Message-ID.
    pub message_id: Option<String>,
    /// References, oldest first.
    pub references: Vec<String>,
    /// In-Reply-To.
    pub in_reply_to: Option<String>,
}

/// A node of the thread tree: a message, or a dummy for a message referenced but absent.
#[derive(Debug, Default)]
struct Node {
    message: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

/// ORDEREDSUBJECT (RFC 5256 §3): threads by base subject, each sorted by date, the first
/// message the parent of the others; threads ordered by their first message.
pub fn ordered_subject(mut messages: Vec<ThreadInput>) -> String {
    messages.sort_by_key(|m| (m.date_ms, m.seq));
    let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for message in &messages {
        match index.get(&message.base_subject) {
            Some(&group) => groups[group].1.push(message.number),
            None => {
                index.insert(message.base_subject.clone(), groups.len());
                groups.push((message.base_subject.clone(), vec![message.number]));
            }
        }
    }
    let mut out = String::new();
    for (_, numbers) in groups {
        out.push('(');
        out.push_str(&numbers[0].to_string());
        match numbers.len() {
            1 => {}
            2 => out.push_str(&format!(" {}", numbers[1])),
            _ => {
                out.push(' ');
                for number in &numbers[1..] {
                    out.push_str(&format!("({number})"));
                }
            }
        }
        out.push(')');
    }
    out
}

/// REFERENCES (RFC 5256 §3): threads by Message-ID/References/In-Reply-To links, with
/// empty containers pruned, root threads of the same base subject merged, and siblings
/// ordered by date.
pub fn references(messages: Vec<ThreadInput>) -> String {
    let mut nodes: Vec<Node> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    fn node_for(by_id: &mut HashMap<String, usize>, id: &str, nodes: &mut Vec<Node>) -> usize {
        *by_id.entry(id.to_owned()).or_insert_with(|| {
            nodes.push(Node::default());
            nodes.len() - 1
        })
    }
    let is_ancestor = |nodes: &Vec<Node>, ancestor: usize, mut node: usize| {
        // Walks up from `node`; bounded by the node count against corrupt chains.
        for _ in 0..=nodes.len() {
            if node == ancestor {
                return true;
            }
            match nodes[node].parent {
                Some(parent) => node = parent,
                None => return false,
            }
        }
        true
    };
    let link = |nodes: &mut Vec<Node>, parent: usize, child: usize| {
        if parent == child || is_ancestor(nodes, child, parent) {
            return;
        }
        if let Some(old) = nodes[child].parent {
            nodes[old].children.retain(|&c| c != child);
        }
        nodes[child].parent = Some(parent);
        nodes[parent].children.push(child);
    };
    // Step 1: a container per message id (a duplicate or missing id gets its own).
    for (index, message) in messages.iter().enumerate() {
        let node = match &message.message_id {
            Some(id) if by_id.get(id).is_none_or(|&node| nodes[node].message.is_none()) => {
                node_for(&mut by_id, id, &mut nodes)
            }
            _ => {
                nodes.push(Node::default());
                nodes.len() - 1
            }
        };
        nodes[node].message = Some(index);
        let mut chain: Vec<String> = message.references.clone();
        if chain.is_empty()
            && let Some(reply_to) = &message.in_reply_to
        {
            chain.push(reply_to.clone());
        }
        // Link the references in order, without breaking links made earlier.
        let mut previous: Option<usize> = None;
        for reference in &chain {
            let current = node_for(&mut by_id, reference, &mut nodes);
            if let Some(previous) = previous
                && nodes[current].parent.is_none()
            {
                link(&mut nodes, previous, current);
            }
            previous = Some(current);
        }
        // The message's parent is the last reference (replacing an earlier guess).
        match previous {
            Some(parent) => link(&mut nodes, parent, node),
            None => {
                if let Some(old) = nodes[node].parent.take() {
                    nodes[old].children.retain(|&c| c != node);
                }
            }
        }
    }
    let date_of = |nodes: &Vec<Node>, node: usize| -> (i64, u32) {
        // A dummy sorts by its first child's date (RFC 5256 step 4).
        let mut current = node;
        for _ in 0..=nodes.len() {
            if let Some(message) = nodes[current].message {
                return (messages[message].date_ms, messages[message].seq);
            }
            match nodes[current].children.first() {
                Some(&child) => current = child,
                None => break,
            }
        }
        (i64::MAX, u32::MAX)
    };
    // Step 3: prune dummies: childless ones vanish; one with children gives them to its
    // parent, except a root dummy with several children, which stays.
    let roots: Vec<usize> = (0..nodes.len()).filter(|&n| nodes[n].parent.is_none()).collect();
    let mut root_set = Vec::new();
    for root in roots {
        prune(&mut nodes, root);
        if nodes[root].message.is_none() {
            match nodes[root].children.len() {
                0 => continue,
                1 => {
                    let child = nodes[root].children[0];
                    nodes[child].parent = None;
                    root_set.push(child);
                }
                _ => root_set.push(root),
            }
        } else {
            root_set.push(root);
        }
    }
    // Step 5: merge root threads with the same base subject.
    let subject_of = |nodes: &Vec<Node>, node: usize| -> Option<(String, bool)> {
        let message = nodes[node].message.or_else(|| nodes[node].children.first().and_then(|&c| nodes[c].message))?;
        Some((messages[message].base_subject.clone(), messages[message].is_reply))
    };
    let mut by_subject: BTreeMap<String, usize> = BTreeMap::new();
    let mut merged_roots = Vec::new();
    root_set.sort_by_key(|&root| date_of(&nodes, root));
    for root in root_set {
        let Some((subject, reply)) = subject_of(&nodes, root).filter(|(subject, _)| !subject.is_empty()) else {
            merged_roots.push(root);
            continue;
        };
        match by_subject.get(&subject).copied() {
            None => {
                by_subject.insert(subject, root);
                merged_roots.push(root);
            }
            Some(existing) => {
                let existing_dummy = nodes[existing].message.is_none();
                let existing_reply = subject_of(&nodes, existing).is_some_and(|(_, reply)| reply);
                if existing_dummy || (!existing_reply && reply) {
                    // RFC 5256 step 5: into the dummy, or the reply under the original.
                    link(&mut nodes, existing, root);
                } else {
                    // Both are replies or neither: a new dummy holds them as siblings.
                    nodes.push(Node::default());
                    let dummy = nodes.len() - 1;
                    link(&mut nodes, dummy, existing);
                    link(&mut nodes, dummy, root);
                    let position = merged_roots.iter().position(|&r| r == existing).expect("root listed");
                    merged_roots[position] = dummy;
                    by_subject.insert(subject, dummy);
                }
            }
        }
    }
    // Step 4/6: siblings by date, roots by date, then print.
    sort_children(&mut nodes, &date_of);
    merged_roots.sort_by_key(|&root| date_of(&nodes, root));
    let mut out = String::new();
    for root in merged_roots {
        out.push('(');
        write_thread(&nodes, &messages, root, &mut out);
        out.push(')');
    }
    out
}

fn prune(nodes: &mut Vec<Node>, node: usize) {
    let children = nodes[node].children.clone();
    for child in children {
        prune(nodes, child);
    }
    let mut new_children = Vec::new();
    for child in std::mem::take(&mut nodes[node].children) {
        if nodes[child].message.is_none() {
            // A non-root dummy is replaced by its children.
            for &grandchild in &nodes[child].children.clone() {
                nodes[grandchild].parent = Some(node);
                new_children.push(grandchild);
            }
            nodes[child].children.clear();
        } else {
            new_children.push(child);
        }
    }
    nodes[node].children = new_children;
}

/// The sort key of a node: the date and sequence number of its first message.
type DateOf<'a> = &'a dyn Fn(&Vec<Node>, usize) -> (i64, u32);

fn sort_children(nodes: &mut [Node], date_of: DateOf) {
    let snapshot: Vec<Node> =
        nodes.iter().map(|n| Node { message: n.message, parent: n.parent, children: n.children.clone() }).collect();
    for node in nodes.iter_mut() {
        node.children.sort_by_key(|&child| date_of(&snapshot, child));
    }
}

/// Writes one thread: a chain of single children as `a b c`, branches as `(x)(y)`.
fn write_thread(nodes: &[Node], messages: &[ThreadInput], node: usize, out: &mut String) {
    let mut current = node;
    let mut first = true;
    loop {
        if let Some(message) = nodes[current].message {
            if !first {
                out.push(' ');
            }
            out.push_str(&messages[message].number.to_string());
            first = false;
        }
        match nodes[current].children.as_slice() {
            [] => return,
            [only] => current = *only,
            children => {
                if !first {
                    out.push(' ');
                }
                for &child in children {
                    out.push('(');
                    write_thread(nodes, messages, child, out);
                    out.push(')');
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(number: u32, subject: &str, id: &str, references: &[&str]) -> ThreadInput {
        ThreadInput {
            number,
            seq: number,
            date_ms: i64::from(number) * 1000,
            base_subject: subject.to_lowercase(),
            is_reply: !references.is_empty(),
            message_id: Some(id.into()),
            references: references.iter().map(|r| r.to_string()).collect(),
            in_reply_to: None,
        }
    }

    #[test]
    fn ordered_subject_groups_by_base_subject() {
        let messages = vec![
            message(1, "a", "1", &[]),
            message(2, "b", "2", &[]),
            message(3, "a", "3", &[]),
            message(4, "a", "4", &[]),
        ];
        assert_eq!(ordered_subject(messages), "(1 (3)(4))(2)");
        assert_eq!(ordered_subject(vec![message(1, "a", "1", &[]), message(2, "a", "2", &[])]), "(1 2)");
    }

    #[test]
    fn references_builds_trees_and_prunes_dummies() {
        let messages = vec![
            message(1, "hello", "<1>", &[]),
            message(2, "hello", "<2>", &["<1>"]),
            message(3, "hello", "<3>", &["<1>", "<2>"]),
            message(4, "hello", "<4>", &["<1>"]),
            message(5, "other", "<5>", &[]),
            // Replies to a message that is not in the mailbox: a dummy root with two children.
            message(6, "lost", "<6>", &["<missing>"]),
            message(7, "lost", "<7>", &["<missing>"]),
        ];
        assert_eq!(references(messages), "(1 (2 3)(4))(5)((6)(7))");
    }

    #[test]
    fn references_survives_loops_and_merges_subjects() {
        let messages = vec![message(1, "x", "<1>", &["<2>"]), message(2, "x", "<2>", &["<1>"])];
        let text = references(messages);
        assert!(text.contains('1') && text.contains('2'), "{text}");
        // Same subject, no references: the reply joins the original's thread.
        let mut reply = message(2, "topic", "<b>", &[]);
        reply.is_reply = true;
        assert_eq!(references(vec![message(1, "topic", "<a>", &[]), reply]), "(1 2)");
    }
}

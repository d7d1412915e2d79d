package ermc

// ring is a growable FIFO of requests.
type ring struct {
	buf        []*request
	head, size int
}

func (q *ring) len() int { return q.size }

func (q *ring) push(r *request) {
	if q.size == len(q.buf) {
		nb := make([]*request, max(16, 2*len(q.buf)))
		for i := 0; i < q.size; i++ {
			nb[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.size)%len(q.buf)] = r
	q.size++
}

func (q *ring) peek() *request {
	if q.size == 0 {
		return nil
	}
	return q.buf[q.head]
}

func (q *ring) pop() *request {
	if q.size == 0 {
		return nil
	}
	r := q.buf[q.head]
	q.buf[q.head] = nil
	q.head = (q.head + 1) % len(q.buf)
	q.size--
	return r
}

// replace swaps old for new in the queue, or among the gets a queued batch
// carries; false if old is not there.
func (q *ring) replace(old, new *request) bool {
	for i := 0; i < q.size; i++ {
		j := (q.head + i) % len(q.buf)
		if q.buf[j] == old {
			q.buf[j] = new
			return true
		}
		for k, m := range q.buf[j].members {
			if m == old {
				q.buf[j].members[k] = new
				return true
			}
		}
	}
	return false
}
